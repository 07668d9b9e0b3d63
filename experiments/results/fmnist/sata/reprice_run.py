"""Re-price an lth.py run's stage records under another energy model: the same masks and the
same measured spike rates through `pipeline.records.hardware_figures`, then the summary and the
printed table as lth.py writes them. Training does not depend on the energy model, so this is
what `lth.py --energy_model=MODEL` prints for the same run."""

import dataclasses
import json
import os
import sys

import numpy as np

from uticket_jax import hardware, models
from uticket_jax.launch import report
from uticket_jax.pipeline import records as rec_lib
from uticket_jax.pipeline.config import LTHConfig
from uticket_jax.pipeline.state import StageRecord

workdir, model_name, out = sys.argv[1], sys.argv[2], sys.argv[3]
raw = json.load(open(os.path.join(workdir, "config.json")))
fields = {f.name for f in dataclasses.fields(LTHConfig)}
cfg = LTHConfig(
    **{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if k in fields}
)
recs = [
    StageRecord.from_json(json.loads(line)) for line in open(os.path.join(workdir, "rounds.jsonl"))
]
shape = {"digits": (8, 8, 1), "fashion_mnist": (28, 28, 1)}[cfg.dataset]
net = models.get_model(cfg.arch, num_classes=10, timesteps=cfg.timesteps)
infos = models.describe_layers(net, (1, *shape))


def masks_of(r):
    with np.load(os.path.join(workdir, "masks", f"round{r.round:02d}_{r.arm}.npz")) as f:
        return {k: f[k].astype(bool) for k in f.files}


new = []
for r in recs:
    masks = masks_of(r)
    specs = hardware.specs_from_layers(
        [i for i in infos if i.path in masks], skip_first=cfg.skip_first_layer
    )
    same = rec_lib.hardware_figures(cfg, specs, masks, r.spike_rates)  # the recorded model
    assert same.plain["energy_total"] == r.hardware.plain["energy_total"], (r.round, r.arm)
    assert same.plain["cycles"] == r.hardware.plain["cycles"]
    hw = rec_lib.hardware_figures(cfg.replace(energy_model=model_name), specs, masks, r.spike_rates)
    new.append(dataclasses.replace(r, hardware=hw))
rows = report.summary_rows(new)
os.makedirs(out, exist_ok=True)
json.dump(
    {"rows": rows, "pairs": report.paired_rows(rows)},
    open(os.path.join(out, "summary.json"), "w"),
    indent=1,
)
import csv

cols = report.csv_columns(rows)
with open(os.path.join(out, "summary.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, cols, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
print(
    f"{cfg.dataset}: {len(recs)} records, recorded {recs[0].hardware.energy_model} figures"
    " reproduced exactly"
)
print(report.format_table(rows))
