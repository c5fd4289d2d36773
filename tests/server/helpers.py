import io

import numpy as np
import torch
from PIL import Image

from export.build import model_from_checkpoint
from server.repository import load_manifest
from training.checkpoint import load_checkpoint


def images(n, seed=0, size=32):
    return [np.random.default_rng(seed + i).integers(0, 256, (size, size, 3), dtype=np.uint8) for i in range(n)]


def png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def torch_exit_logits(run_dir, repo_model_dir, imgs):
    """What the torch model says at every exit for uint8 images, normalised as the manifest says."""
    info = load_manifest(repo_model_dir)
    model = model_from_checkpoint(load_checkpoint(run_dir), str(run_dir))
    x = np.stack(imgs).astype(np.float32) / 255
    x = (x - np.array(info.mean, np.float32)) / np.array(info.std, np.float32)
    with torch.no_grad():
        out = model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    return [z.numpy() for z in out], [e.temperature for e in info.exits]


def calibrated_confidence(logits, temperature):
    z = logits / temperature
    p = np.exp(z - z.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)).max(-1)


def start_server_process(repo, *extra):
    """`python -m server` on free ports; returns (process, target, metrics_port); stderr is captured."""
    import subprocess

    from server.demo import start_server

    return start_server(repo, list(extra), stderr=subprocess.PIPE, quiet=True)


def requests_ok(metrics_port) -> float:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "auxnet_requests_total" and s.labels.get("code") == "OK")


def wait_for(predicate, timeout_s: float = 20.0, every_s: float = 0.02) -> bool:
    """Poll until `predicate()` holds, under a generous limit: tests wait for events, not for fixed sleeps."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every_s)
    return bool(predicate())
