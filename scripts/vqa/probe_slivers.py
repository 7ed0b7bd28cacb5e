#!/usr/bin/env python3
"""How the tiny LLaVA counts from a subset of its visual tokens: the "slivers" figures of
docs/default-model.md.

On the val split's count questions, with HF transformers in f32, it feeds the decoder
hand-picked subsets of the 256 patches (in raster order, positions compacted, as encoder-side
pruning leaves them) and prints how many answers are right:
- none: all patches;
- divprune: DivPrune's 28 (greedy max-min of 1 - cosine on the projector outputs), and the
  mean number of object patches, slivers and plain-background patches among them;
- objects: every patch an object owns (train_tiny_llava.owner_of: at least a fifth of it);
- objects + slivers: and every patch an object only grazes;
- divprune - slivers: DivPrune's 28 without its slivers;
- objects + 10 background: the objects and 10 plain-background patches drawn at random.
It also prints where CLS attention (vision layer -2, head mean) and layer 0's attention from
the text after the image rank those three kinds of patch (mean percentile over the image),
and, on the first --scenes val scenes, how often a selection keeps a patch of every object:
ARP's B1=56 at --arp-floor 0.3 and 1 and its B1=41 at 1 (the default at B=28 on this
8-layer decoder; arp.rs's integer allocation, through the port in
tests/fixtures/make_prune_reference.py), the top 56 by CLS attention, and DivPrune's 24 and
28.

    python3 scripts/vqa/probe_slivers.py [--model weights/tiny-llava-vqa] [--data data/vqa]

Same environment as train_tiny_llava.py; ~2 minutes on 2 cores.
"""
import argparse
import os
import sys

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer
from transformers import LlavaForConditionalGeneration

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "fixtures"))
import make_prune_reference as prune_reference  # noqa: E402
import train_tiny_llava as t  # noqa: E402

EOS = 2


def arp(cls, b1, alpha):
    """ARP's keep set in arp.rs's integer arithmetic (the pruning fixture's port), 4x4 regions."""
    return np.array(prune_reference.arp_select(cls.tolist(), b1, grid=t.GRID, r=4, alpha=alpha)[0])


def divprune(proj, keep):
    """Greedy max-min diversity on 1 - cosine, as vlm-run's divprune.rs."""
    x = proj / proj.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    dist = (1 - x @ x.T).numpy()
    off = dist + np.diag(np.full(len(dist), np.inf))
    chosen = [int(np.argmax(off.min(1)))]
    nearest = dist[chosen[0]].copy()
    for _ in range(keep - 1):
        nearest[chosen] = -np.inf
        chosen.append(int(np.argmax(nearest)))
        nearest = np.minimum(nearest, dist[chosen[-1]])
    return np.array(sorted(chosen))


class Probe:
    def __init__(self, model_dir, data):
        self.model = LlavaForConditionalGeneration.from_pretrained(
            model_dir, torch_dtype=torch.float32, attn_implementation="eager").eval()
        self.tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
        self.data = data
        self.lm = self.model.model.language_model

    def vision(self, image):
        px = torch.from_numpy(t.normalise(Image.open(os.path.join(self.data, image)))[None].copy())
        out = self.model.model.vision_tower(pixel_values=px, output_hidden_states=True,
                                            output_attentions=True)
        cls = out.attentions[-2][0].mean(0)[0, 1:].numpy()
        return cls, self.model.model.multi_modal_projector(out.hidden_states[-2][0, 1:])

    def embed(self, ids, proj, rows):
        at = ids.index(self.model.config.image_token_index)
        e = self.lm.embed_tokens
        return torch.cat([e(torch.tensor(ids[:at])), proj[rows],
                          e(torch.tensor(ids[at + 1:]))])[None], at

    def answer(self, ids, proj, rows):
        """Greedy answer (up to 4 tokens) with only the patches `rows` on view."""
        out = []
        for _ in range(4):
            h, _ = self.embed(ids + out, proj, rows)
            tok = int(self.model.lm_head(self.lm(inputs_embeds=h).last_hidden_state[0, -1]).argmax())
            if tok == EOS:
                break
            out.append(tok)
        return self.tok.decode(out).strip().lower()

    def text_attention(self, ids, proj):
        """Layer 0's attention from the text after the image to each patch (head mean)."""
        h, at = self.embed(ids, proj, np.arange(proj.shape[0]))
        got = {}
        hook = self.lm.layers[0].self_attn.register_forward_hook(
            lambda m, i, o: got.__setitem__("a", o[1]))
        self.lm(inputs_embeds=h)
        hook.remove()
        n = proj.shape[0]
        return got["a"][0, :, at + n:, at:at + n].mean((0, 1)).numpy()


def percentile(v):
    return (np.argsort(np.argsort(v)) + 1.0) / len(v)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="weights/tiny-llava-vqa")
    ap.add_argument("--data", default="data/vqa")
    ap.add_argument("--keep", type=int, default=28)
    ap.add_argument("--scenes", type=int, default=200)
    a = ap.parse_args()
    torch.set_grad_enabled(False)
    p = Probe(a.model, a.data)
    qs = [q for q in t.read_jsonl(os.path.join(a.data, "val.jsonl")) if q["category"] == "count"]
    scenes = {s["image"]: s for s in t.read_jsonl(os.path.join(a.data, "val_scenes.jsonl"))}
    rng = np.random.default_rng(0)
    right, tokens, mix, ranks = {}, {}, [], {}
    for q in qs:
        owner = t.scene_owner(scenes[q["image"]])
        obj, sliver, plain = (np.flatnonzero(owner >= 0), np.flatnonzero(owner == t.SLIVER),
                              np.flatnonzero(owner == -1))
        cls, proj = p.vision(q["image"])
        ids = p.tok.encode(t.TEMPLATE.format(q=q["question"])).ids
        div = divprune(proj, a.keep)
        mix.append([np.isin(div, s).sum() for s in (obj, sliver, plain)])
        for name, v in (("CLS attention", cls), ("layer 0 text attention", p.text_attention(ids, proj))):
            pct = percentile(v)
            for kind, s in (("object", obj), ("sliver", sliver), ("background", plain)):
                if len(s):
                    ranks.setdefault((name, kind), []).append(pct[s].mean())
        subsets = {
            "none": np.arange(len(owner)),
            f"divprune {a.keep}": div,
            "objects": obj,
            "objects + slivers": np.union1d(obj, sliver),
            f"divprune {a.keep} - slivers": np.setdiff1d(div, sliver),
            "objects + 10 background": np.union1d(obj, rng.choice(plain, min(10, len(plain)), replace=False)),
        }
        for name, rows in subsets.items():
            right[name] = right.get(name, 0) + (p.answer(ids, proj, rows) == q["answer"])
            tokens[name] = tokens.get(name, 0) + len(rows)
    print(f"{len(qs)} val count questions; answers right with only these patches on view:")
    for name in right:
        print(f"  {name:28s} {right[name]:4d}   ({tokens[name] / len(qs):.1f} tokens on average)")
    m = np.mean(mix, 0)
    print(f"divprune {a.keep}: {m[0]:.1f} object patches, {m[1]:.1f} slivers, {m[2]:.1f} plain "
          "background on average")
    for (name, kind), v in sorted(ranks.items()):
        print(f"{name}: {kind} patches at mean percentile {100 * np.mean(v):.0f}")
    covered, seen, lost = {}, {}, {}
    val_scenes = list(scenes.values())[:a.scenes]
    for sc in val_scenes:
        owner = t.scene_owner(sc)
        objects = set(owner[owner >= 0].tolist())
        cls, proj = p.vision(sc["image"])
        for name, rows in (("ARP B1=56, alpha 0.3", arp(cls, 56, 0.3)),
                           ("ARP B1=56, alpha 1", arp(cls, 56, 1.0)),
                           ("ARP B1=41, alpha 1", arp(cls, 41, 1.0)),
                           ("CLS attention top 56", np.argsort(-cls)[:56]),
                           ("DivPrune 24", divprune(proj, 24)),
                           ("DivPrune 28", divprune(proj, 28))):
            got = set(owner[rows][owner[rows] >= 0].tolist())
            covered[name] = covered.get(name, 0) + (got == objects)
            if name == "ARP B1=56, alpha 1":
                for i in objects:
                    size = sc["objects"][i]["size"]
                    seen[size] = seen.get(size, 0) + 1
                    lost[size] = lost.get(size, 0) + (i not in got)
    print(f"first {len(val_scenes)} val scenes: a patch of every object kept by")
    for name, n in covered.items():
        print(f"  {name:24s} {n}")
    print("objects without a patch in ARP's 56 at alpha 1, by size: "
          + ", ".join(f"{k} {lost[k]} of {seen[k]}" for k in sorted(seen)))


if __name__ == "__main__":
    main()
