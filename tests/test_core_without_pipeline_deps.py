"""The training/embedding core must run on a bare GPU box (torch, timm, numpy, Pillow, pyarrow, polars; see
docs/ARCHITECTURE.md): no dagster, mlflow or faiss, at import time or later."""

import subprocess
import sys
import textwrap

CODE = textwrap.dedent("""
    import sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"dagster", "dagster_pipes", "mlflow", "faiss"}:
                raise ImportError(f"blocked: {name}")
    sys.meta_path.insert(0, Block())
    import torch
    from hmpcl_lib.modeling import dataset as data
    from hmpcl_lib.modeling import distributed
    from hmpcl_lib.retrieval import embedding
    from hmpcl_lib.modeling import losses
    from hmpcl_lib.modeling import models
    from hmpcl_lib.modeling import samplers
    from hmpcl_lib.train import loop as training  # noqa: F401
    model = models.build_encoder("efficientnet_lite0", embed_dim=16, weights="none")
    z = model(torch.rand(4, 3, 32, 32))
    loss = losses.HierarchicalContrastiveLoss()(z, torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 0, 1]),
                                                torch.tensor([0, 0, 0, 0]))
    loss.backward()
    print("ok", tuple(z.shape), float(loss) > 0)
""")


def test_training_core_imports_and_runs_without_dagster_mlflow_faiss():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok (4, 16) True"
