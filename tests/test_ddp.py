"""DDP under torchrun: two CPU processes (gloo) train in lock-step and their replicas stay identical."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("scipy")

SCRIPT = textwrap.dedent('''
    import json, sys
    import torch
    from ds2a.train.loop import TrainConfig, Trainer
    data, out, dump = sys.argv[1:4]
    tiny = dict(backbone_width=16, hidden_dim=32, encoder_layers=1, encoder_heads=2, encoder_ffn=64,
                decoder_layers=1, decoder_heads=2, decoder_ffn=64, num_queries=4, norm_groups=8)
    cfg = TrainConfig(model="ds2a_tiny", data=data, out=out, iters=3, batch_size=1, crop=(64, 64),
                      eval_every=3, ckpt_every=3, workers=0, num_points=64, threads=1, lr=1e-3,
                      ratio_range=(0.8, 1.25), model_overrides=tiny, progress=False)
    trainer = Trainer(cfg)
    rank = trainer.dist.rank
    params = lambda: {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    torch.save(params(), f"{dump}/init{rank}.pt")
    summary = trainer.run()
    torch.save(params(), f"{dump}/rank{rank}.pt")
    json.dump({"world": trainer.dist.world_size, "find_unused": trainer.find_unused,
               "backend": torch.distributed.get_backend(), "iter": summary["iter"]},
              open(f"{dump}/info{rank}.json", "w"))
    torch.distributed.destroy_process_group()
''')


@pytest.mark.slow
def test_two_cpu_ranks_keep_identical_replicas(tmp_path: Path) -> None:
    import json

    from ds2a.data import write_dataset

    data = tmp_path / "data"
    write_dataset(data, 4, 2, size_hw=(64, 64), seed=0, n_val=2)
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT)
    dump = tmp_path / "dump"
    dump.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script), str(data), str(tmp_path / "run"), str(dump)],
        capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    infos = [json.loads((dump / f"info{r}.json").read_text()) for r in (0, 1)]
    assert all(i["world"] == 2 and i["backend"] == "gloo" and i["iter"] == 3 for i in infos)
    init, r0, r1 = (torch.load(dump / n, weights_only=True) for n in ("init0.pt", "rank0.pt", "rank1.pt"))
    # parameters (not BN running statistics: on CPU each rank keeps its own and DDP broadcasts
    # rank 0's before every forward; on GPUs the loop uses SyncBatchNorm as the official configs)
    trained = [k for k in r0 if not torch.equal(r0[k], init[k])]
    assert trained, "no parameter changed: the ranks did not train"
    assert all(torch.equal(r0[k], r1[k]) for k in r0), "replicas diverged"
    # only rank 0 writes the run folder: checkpoints and logs exist once
    assert (tmp_path / "run" / "last.pt").exists() and (tmp_path / "run" / "best.pt").exists()
    rows = (tmp_path / "run" / "eval.csv").read_text().strip().splitlines()
    assert len(rows) == 2  # header + one eval at iteration 3
