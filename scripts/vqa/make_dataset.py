#!/usr/bin/env python3
"""Synthetic visual QA: seeded 336x336 scenes of coloured shapes, with short-answer questions.

Each scene has 1-8 objects (circle, square, triangle, star, cross, diamond) in 7 colours and
three sizes, placed without overlap across the whole image, over a plain or noisy background.
Questions (category in brackets) have one- or two-word answers:

  [exist]     Is there a red circle in the image?          yes / no (POPE style; negatives are
              random pairs, or adversarial: a colour and a shape that are both in the scene
              but not together)
  [color]     What color is the triangle?                  red      (the shape is unique)
  [shape]     What shape is the blue object?               star     (the colour is unique)
  [count]     How many circles are there? / How many red objects are there?     2
  [position]  Where is the star?                           top left (quadrant of its centre)
  [detail]    What color/shape is the small object?        ...      (one small object, ~1-2
              patches, so the answer needs that patch)

A controlled share of the questions about one object (TOP_SHARE) pick an object whose centre
lies in the top third of the image: raster-order pruning with a recency bias drops those
first. Each such question carries "top": true.

Output (under OUT, default data/vqa):
  {split}.jsonl          one question per line: {"image","question","answer","category","top"}
  {split}_scenes.jsonl   one scene per line (objects with colour, shape, size, centre, radius);
                         the training script reads it for stage 1's labels
  images/{split}/NNNNN.png

Splits are seeded separately (train 0, val 1, test 2), so any split can be regenerated alone.
The test split is for the final numbers only; tune on val.

    python3 scripts/vqa/make_dataset.py [--out data/vqa] [--train 8000] [--val 400] [--test 500]
    python3 scripts/vqa/make_dataset.py --out data/vqa --sample tests/fixtures/vqa-sample
Needs numpy and pillow only. The second line writes the committed sample that the eval test
reads: the first 50 test questions whose images have plain backgrounds (noisy PNGs are large).
"""
import argparse
import json
import math
import os
import random

import numpy as np
from PIL import Image, ImageDraw

SIZE = 336
COLORS = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 90, 230),
    "yellow": (235, 215, 40), "purple": (150, 60, 200), "orange": (245, 140, 30),
    "white": (240, 240, 240),
}
SHAPES = ["circle", "square", "triangle", "star", "cross", "diamond"]
PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars",
          "cross": "crosses", "diamond": "diamonds"}
SIZES = {"small": (11, 13), "medium": (16, 20), "large": (24, 30)}  # radius in pixels
TOP_SHARE = 0.4
TOP_LIMIT = SIZE / 3
COUNT_WORDS = [str(i) for i in range(9)]
QUESTIONS_PER_IMAGE = {"train": 8, "val": 2, "test": 2}
CATEGORIES = ["exist", "color", "shape", "count", "position", "detail"]
CATEGORY_WEIGHTS = [1, 1, 1, 1, 1, 2.5]  # detail needs a scene with a small object


def shape_polygon(shape, cx, cy, r):
    """Outline points (or a box for circles) of one object."""
    if shape == "circle":
        return [cx - r, cy - r, cx + r, cy + r]
    if shape == "square":
        s = r * 0.85
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r * 0.95, cy + r * 0.75), (cx - r * 0.95, cy + r * 0.75)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r * 0.8, cy), (cx, cy + r), (cx - r * 0.8, cy)]
    if shape == "star":
        pts = []
        for i in range(10):
            a = -math.pi / 2 + i * math.pi / 5
            rr = r if i % 2 == 0 else r * 0.45
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        return pts
    if shape == "cross":
        t = r * 0.33
        return [(cx - t, cy - r), (cx + t, cy - r), (cx + t, cy - t), (cx + r, cy - t),
                (cx + r, cy + t), (cx + t, cy + t), (cx + t, cy + r), (cx - t, cy + r),
                (cx - t, cy + t), (cx - r, cy + t), (cx - r, cy - t), (cx - t, cy - t)]
    raise ValueError(shape)


def draw_object(draw, obj, fill):
    pts = shape_polygon(obj["shape"], obj["cx"], obj["cy"], obj["r"])
    if obj["shape"] == "circle":
        draw.ellipse(pts, fill=fill)
    else:
        draw.polygon(pts, fill=fill)


def make_scene(rng, small_share=None):
    """Objects and background of one scene. About a third of scenes carry exactly one small
    object (for detail questions); half force an object into the top third. With
    `small_share`, every object is small with that probability instead (the ViT's
    pretraining scenes; the splits never set it)."""
    n = rng.randint(1, 8)
    with_small = rng.random() < 0.35
    force_top = rng.random() < 0.5
    objects = []
    for i in range(n):
        if small_share is None:
            size = "small" if (with_small and i == 0) else rng.choice(["medium", "large"])
        else:
            size = "small" if rng.random() < small_share else rng.choice(["medium", "large"])
        r = rng.randint(*SIZES[size])
        for _ in range(200):
            cx = rng.uniform(r + 2, SIZE - r - 2)
            top = force_top and i == n - 1 and not any(o["cy"] < TOP_LIMIT for o in objects)
            cy = rng.uniform(r + 2, TOP_LIMIT - 4 if top else SIZE - r - 2)
            if all(math.hypot(cx - o["cx"], cy - o["cy"]) > r + o["r"] + 6 for o in objects):
                break
        else:
            continue
        objects.append({"shape": rng.choice(SHAPES), "color": rng.choice(list(COLORS)),
                        "size": size, "cx": round(cx, 1), "cy": round(cy, 1), "r": r})
    rng.shuffle(objects)
    bg_level = rng.randint(15, 95)
    bg = {"rgb": [bg_level + rng.randint(-10, 10) for _ in range(3)],
          "noise": rng.choice([0, 0, 12, 25]), "seed": rng.randrange(1 << 30)}
    return {"objects": objects, "background": bg}


def render(scene):
    bg = scene["background"]
    base = np.empty((SIZE, SIZE, 3), np.float32)
    base[:] = bg["rgb"]
    if bg["noise"]:
        base += np.random.default_rng(bg["seed"]).normal(0, bg["noise"], base.shape)
    im = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(im)
    jitter = random.Random(bg["seed"])
    for o in scene["objects"]:
        fill = tuple(max(0, min(255, c + jitter.randint(-15, 15))) for c in COLORS[o["color"]])
        draw_object(d, o, fill)
    return im


def quadrant(o):
    v = "top" if o["cy"] < SIZE / 2 else "bottom"
    h = "left" if o["cx"] < SIZE / 2 else "right"
    return f"{v} {h}"


def pick_target(rng, candidates):
    """An object to ask about: from the top third with probability TOP_SHARE when one is
    there, else any."""
    top = [o for o in candidates if o["cy"] < TOP_LIMIT]
    if top and rng.random() < TOP_SHARE:
        return rng.choice(top)
    return rng.choice(candidates)


def ask(rng, scene, category, count_power=0):
    """One question of the category about the scene, or None when the scene has no
    unambiguous one. A count question asks about a colour or shape in the scene 85% of the
    time, chosen uniformly, or with `count_power` p in proportion to its count to the power
    p (stage 2 of the training sets it to see more large counts; the splits never do)."""
    objs = scene["objects"]
    shape_n = {s: sum(o["shape"] == s for o in objs) for s in SHAPES}
    color_n = {c: sum(o["color"] == c for o in objs) for c in COLORS}
    if category == "exist":
        pairs = {(o["color"], o["shape"]) for o in objs}
        if rng.random() < 0.5 and objs:
            o = pick_target(rng, objs)
            return f"Is there a {o['color']} {o['shape']} in the image?", "yes", o
        adversarial = [(c, s) for c in COLORS if color_n[c] for s in SHAPES
                       if shape_n[s] and (c, s) not in pairs]
        if adversarial and rng.random() < 0.5:
            c, s = rng.choice(adversarial)
        else:
            c, s = rng.choice([(c, s) for c in COLORS for s in SHAPES if (c, s) not in pairs])
        return f"Is there a {c} {s} in the image?", "no", None
    if category == "color":
        cands = [o for o in objs if shape_n[o["shape"]] == 1]
        if not cands:
            return None
        o = pick_target(rng, cands)
        return f"What color is the {o['shape']}?", o["color"], o
    if category == "shape":
        cands = [o for o in objs if color_n[o["color"]] == 1]
        if not cands:
            return None
        o = pick_target(rng, cands)
        return f"What shape is the {o['color']} object?", o["shape"], o
    if category == "count":
        def subject(names, count):
            present = [x for x in names if count[x]]
            if not present or rng.random() >= 0.85:
                return rng.choice(names)
            if count_power:
                return rng.choices(present, [count[x] ** count_power for x in present])[0]
            return rng.choice(present)
        if rng.random() < 0.5:
            s = subject(SHAPES, shape_n)
            return f"How many {PLURAL[s]} are there?", COUNT_WORDS[shape_n[s]], None
        c = subject(list(COLORS), color_n)
        return f"How many {c} objects are there?", COUNT_WORDS[color_n[c]], None
    if category == "position":
        cands = [o for o in objs if shape_n[o["shape"]] == 1
                 and abs(o["cx"] - SIZE / 2) > 16 and abs(o["cy"] - SIZE / 2) > 16]
        if not cands:
            return None
        o = pick_target(rng, cands)
        return f"Where is the {o['shape']}?", quadrant(o), o
    if category == "detail":
        small = [o for o in objs if o["size"] == "small"]
        if len(small) != 1:
            return None
        o = small[0]
        if rng.random() < 0.5:
            return "What color is the small object?", o["color"], o
        return "What shape is the small object?", o["shape"], o
    raise ValueError(category)


def questions_for(rng, scene, n, weights=CATEGORY_WEIGHTS, count_power=0):
    """Up to n distinct questions about the scene, categories drawn with `weights`."""
    out, seen = [], set()
    for _ in range(n * 6):
        if len(out) == n:
            break
        q = ask(rng, scene, rng.choices(CATEGORIES, weights)[0], count_power)
        if q is None or q[0] in seen:
            continue
        seen.add(q[0])
        out.append(q)
    return out


def category_of(question):
    q = question.lower()
    if q.startswith("is there"):
        return "exist"
    if "small object" in q:
        return "detail"
    if q.startswith("what color"):
        return "color"
    if q.startswith("what shape"):
        return "shape"
    if q.startswith("how many"):
        return "count"
    return "position"


def make_split(out, split, n_images, seed, write_images=True):
    rng = random.Random(seed)
    img_dir = os.path.join(out, "images", split)
    os.makedirs(img_dir, exist_ok=True)
    with open(os.path.join(out, f"{split}.jsonl"), "w") as fq, \
            open(os.path.join(out, f"{split}_scenes.jsonl"), "w") as fs:
        for i in range(n_images):
            scene = make_scene(rng)
            rel = f"images/{split}/{i:05d}.png"
            scene["image"] = rel
            fs.write(json.dumps(scene) + "\n")
            if write_images:
                render(scene).save(os.path.join(out, rel), optimize=False, compress_level=1)
            for q, a, o in questions_for(rng, scene, QUESTIONS_PER_IMAGE[split]):
                top = bool(o is not None and o["cy"] < TOP_LIMIT)
                fq.write(json.dumps({"image": rel, "question": q, "answer": a,
                                     "category": category_of(q), "top": top}) + "\n")


def make_sample(out, dest, n):
    """The first n test questions on plain-background images (small PNGs), with their
    images, for the repository's eval test."""
    scenes = {}
    with open(os.path.join(out, "test_scenes.jsonl")) as f:
        for line in f:
            sc = json.loads(line)
            scenes[sc["image"]] = sc
    os.makedirs(os.path.join(dest, "images"), exist_ok=True)
    picked = []
    with open(os.path.join(out, "test.jsonl")) as f:
        for line in f:
            q = json.loads(line)
            if scenes[q["image"]]["background"]["noise"] == 0 and len(picked) < n:
                picked.append(q)
    with open(os.path.join(dest, "questions.jsonl"), "w") as f:
        for q in picked:
            name = "images/" + os.path.basename(q["image"])
            if not os.path.exists(os.path.join(dest, name)):
                render(scenes[q["image"]]).save(os.path.join(dest, name), optimize=True)
            f.write(json.dumps(dict(q, image=name)) + "\n")
    print(f"sample: {len(picked)} questions in {dest}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="data/vqa")
    ap.add_argument("--train", type=int, default=8000, help="train images (8 questions each)")
    ap.add_argument("--val", type=int, default=400, help="val images (2 questions each)")
    ap.add_argument("--test", type=int, default=500, help="test images (2 questions each)")
    ap.add_argument("--no-train-images", action="store_true",
                    help="write train scenes and questions only (training renders them)")
    ap.add_argument("--sample", metavar="DIR",
                    help="only write the eval test's sample (50 test questions on plain "
                         "backgrounds) from an existing --out into DIR")
    a = ap.parse_args()
    if a.sample:
        make_sample(a.out, a.sample, 50)
        return
    os.makedirs(a.out, exist_ok=True)
    for split, n, seed in [("val", a.val, 1), ("test", a.test, 2), ("train", a.train, 0)]:
        make_split(a.out, split, n, seed, write_images=not (split == "train" and a.no_train_images))
        print(f"{split}: {n} images")


if __name__ == "__main__":
    main()
