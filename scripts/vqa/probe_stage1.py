#!/usr/bin/env python3
"""What a stage-1 checkpoint of train_tiny_llava.py has learnt, read through its own heads on
the first 400 val scenes: how often the count-density head's sum over the patches rounds to
the exact count (every colour and shape channel of every scene, and only the channels
present in the scene), and the per-patch shape head's accuracy on object patches and on
small objects' patches. docs/default-model.md ("a longer stage 1") gives its figures for
3000 and 5000 steps.

    python3 scripts/vqa/probe_stage1.py data/train-work/stage1.pt [--data data/vqa]

Same environment as train_tiny_llava.py; the ViT runs in f32.
"""
import argparse
import os
import sys

import numpy as np
import torch
from transformers import CLIPVisionModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_tiny_llava as t  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint", help="stage1.pt under train_tiny_llava.py's --work")
    ap.add_argument("--data", default="data/vqa")
    ap.add_argument("--scenes", type=int, default=400)
    a = ap.parse_args()
    st = torch.load(a.checkpoint, weights_only=False)
    vt = CLIPVisionModel(t.vision_config())
    vt.load_state_dict(st["vision"])
    vt.eval()
    heads = t.Stage1Heads(vt.config.hidden_size, density_weight=1.0)
    heads.load_state_dict(st["heads"])
    scenes = t.read_jsonl(os.path.join(a.data, "val_scenes.jsonl"))[:a.scenes]
    exact = total = exact_present = present = 0
    shape_ok = shape_n = small_ok = small_n = 0
    with torch.no_grad():
        for s in range(0, len(scenes), 25):
            batch = scenes[s:s + 25]
            px = torch.from_numpy(np.stack([t.pixels_of(sc) for sc in batch]))
            feats = vt(pixel_values=px, output_hidden_states=True).hidden_states[-2][:, 1:]
            counts = np.rint(heads.density(feats).sum(1).numpy())
            shapes = torch.split(heads.dense(feats), t.DENSE, dim=-1)[1].argmax(-1).numpy()
            for b, sc in enumerate(batch):
                dense, _, density = t.labels_of(sc)
                truth = np.rint(density.sum(-1))
                exact += int((counts[b] == truth).sum())
                total += truth.size
                m = truth > 0
                exact_present += int((counts[b][m] == truth[m]).sum())
                present += int(m.sum())
                obj, small = dense[1] > 0, dense[2] == 1
                shape_ok += int((shapes[b][obj] == dense[1][obj]).sum())
                shape_n += int(obj.sum())
                small_ok += int((shapes[b][small] == dense[1][small]).sum())
                small_n += int(small.sum())
    print(f"density head, exact count: {exact / total:.1%} of {total} (scene, channel) pairs, "
          f"{exact_present / present:.1%} of the {present} present in their scene")
    print(f"shape head: {shape_ok / shape_n:.1%} of {shape_n} object patches, "
          f"{small_ok / small_n:.1%} of {small_n} small objects' patches")


if __name__ == "__main__":
    main()
