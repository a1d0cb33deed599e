"""Write tests/data/torchscale_tiny.pt: a tiny official torchscale RetNetDecoder and its logits.

The fixture lets tests/test_torchscale.py check ``RetNetLM.from_torchscale`` against the official code
without installing it. It needs torchscale 0.3.0 and fairscale 0.4.0, which are NOT project
dependencies; install them outside the project's environment and point this script at them::

    .venv/bin/pip install --target /tmp/tsdeps --no-deps torchscale==0.3.0 fairscale==0.4.0
    .venv/bin/python scripts/make_torchscale_fixture.py --torchscale-path /tmp/tsdeps

(torchscale imports timm only for ``drop_path``; without timm a stub is used, drop_path is off here.)

What it stores, all float64: the official config names, the state dict (random weights, genuinely
float64, norm weights away from 1, q and k scaled up so that the official rescaling
``/ max(1, |row sum|)`` is active on some rows), the input tokens, and the official logits of its three
modes (parallel; recurrent, token by token with ``incremental_state``; chunkwise, with
``chunkwise_recurrent=True``) for ``layernorm_eps`` 0 and 1e-6.

torchscale's RMSNorm and GLU call ``x.float()``, which for float64 inputs *down*-casts to float32, so
its float64 logits carry float32 round-off (~1e-7). The reference logits ("logits") are therefore
computed with those two forwards patched to stay in the input's dtype: the same equations, evaluated in
float64. The unpatched parallel logits are kept too ("logits_as_shipped"), as is, for every case, how
far the official recurrent and chunkwise modes are from its parallel mode ("disagreement").
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import types
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]

# The model: small, but with every part (2 heads, d_k != d_v, 2 layers, several chunks) exercised.
CONFIG = dict(
    vocab_size=61, decoder_embed_dim=32, decoder_value_embed_dim=48, decoder_retention_heads=2,
    decoder_ffn_embed_dim=40, decoder_layers=2, recurrent_chunk_size=4,
)
EPS_VALUES = (0.0, 1e-6)
BATCH, LENGTH = 2, 12            # LENGTH is a multiple of recurrent_chunk_size: 3 chunks
QK_SCALE = 6.0                   # makes |row sum of the retention scores| > 1 on about 30% of the rows
MODES = ("parallel", "recurrent", "chunkwise")


def import_torchscale(path: str | None):
    if path:
        sys.path.insert(0, path)
    try:
        import timm.models.layers  # noqa: F401
    except ImportError:  # torchscale needs only timm's drop_path, which is unused at drop_path_rate 0
        def drop_path(x, drop_prob=0.0, training=False, scale_by_keep=True):
            return x
        for name in ("timm", "timm.models", "timm.models.layers"):
            sys.modules[name] = types.ModuleType(name)
        sys.modules["timm.models.layers"].drop_path = drop_path
    import torchscale
    from torchscale.architecture.config import RetNetConfig
    from torchscale.architecture.retnet import RetNetDecoder
    from torchscale.component.gate_linear_unit import GLU
    from torchscale.component.rms_norm import RMSNorm
    return torchscale, RetNetConfig, RetNetDecoder, RMSNorm, GLU


@contextlib.contextmanager
def computed_in_input_dtype(RMSNorm, GLU):
    """torchscale's RMSNorm and GLU forwards without their ``.float()`` casts (same equations)."""
    def rms_forward(self, x):
        out = self._norm(x)
        return out * self.weight if self.weight is not None else out

    def glu_forward(self, x):  # dropout is 0 and the model is in eval mode
        return self.fc2(self.activation_fn(self.fc1(x)) * self.gate(x))

    saved = RMSNorm.forward, GLU.forward
    RMSNorm.forward, GLU.forward = rms_forward, glu_forward
    try:
        yield
    finally:
        RMSNorm.forward, GLU.forward = saved


def official_logits(decoders, tokens):
    """``{mode: (B, T, vocab) logits}`` of the official decoders (one built with chunkwise_recurrent)."""
    plain, chunked = decoders
    with torch.no_grad():
        parallel = plain(tokens)[0]
        incremental_state = {}  # not "is_first_step": each call feeds the prefix, only its last token runs
        recurrent = torch.cat(
            [plain(tokens[:, : t + 1], incremental_state=incremental_state)[0] for t in range(tokens.shape[1])],
            dim=1,
        )
        chunkwise = chunked(tokens)[0]
    return {"parallel": parallel, "recurrent": recurrent, "chunkwise": chunkwise}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--torchscale-path", default=os.environ.get("TORCHSCALE_PATH"),
                        help="a folder holding torchscale 0.3.0 and fairscale 0.4.0 (pip --target)")
    parser.add_argument("--out", default=str(ROOT / "tests" / "data" / "torchscale_tiny.pt"))
    args = parser.parse_args()
    torchscale, RetNetConfig, RetNetDecoder, RMSNorm, GLU = import_torchscale(args.torchscale_path)
    version = getattr(torchscale, "__version__", None) or _dist_version("torchscale")

    def build(eps, chunkwise):
        torch.manual_seed(0)
        config = RetNetConfig(**CONFIG, layernorm_eps=eps, chunkwise_recurrent=chunkwise)
        decoder = RetNetDecoder(config, embed_tokens=nn.Embedding(CONFIG["vocab_size"], CONFIG["decoder_embed_dim"]))
        return decoder.double().eval()

    # Weights: the official init, made genuinely float64 (a float32 round trip would show), norms != 1.
    reference = build(0.0, False)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in reference.named_parameters():
            p.mul_(1 + 0.1 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
            if "layer_norm" in name:
                p.copy_(1 + 0.5 * (2 * torch.rand(p.shape, generator=gen, dtype=torch.float64) - 1))
            if "q_proj" in name or "k_proj" in name:
                p.mul_(QK_SCALE)
    state_dict = {k: v.clone() for k, v in reference.state_dict().items()}
    tokens = torch.randint(0, CONFIG["vocab_size"], (BATCH, LENGTH), generator=gen)

    logits, as_shipped, disagreement = {}, {}, {}
    for eps in EPS_VALUES:
        decoders = [build(eps, chunkwise) for chunkwise in (False, True)]
        for d in decoders:
            d.load_state_dict(state_dict)
        with computed_in_input_dtype(RMSNorm, GLU):
            faithful = official_logits(decoders, tokens)
        shipped = official_logits(decoders, tokens)
        key = repr(eps)
        logits[key] = faithful
        as_shipped[key] = {"parallel": shipped["parallel"]}
        disagreement[key] = {
            kind: {m: (out[m] - out["parallel"]).abs().max().item() for m in ("recurrent", "chunkwise")}
            for kind, out in (("float64", faithful), ("as_shipped", shipped))
        }
        disagreement[key]["as_shipped_vs_float64"] = (shipped["parallel"] - faithful["parallel"]).abs().max().item()

    fixture = {
        "torchscale_version": version,
        "config": dict(CONFIG, layernorm_eps=0.0),
        "eps_values": list(EPS_VALUES),
        "state_dict": state_dict,
        "tokens": tokens,
        "logits": logits,
        "logits_as_shipped": as_shipped,
        "disagreement": disagreement,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(fixture, out)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KB), torchscale {version}")
    for key, d in disagreement.items():
        print(f"layernorm_eps={key}: official modes vs its parallel (float64): {d['float64']}; "
              f"as shipped: {d['as_shipped']}; as-shipped vs float64 parallel: {d['as_shipped_vs_float64']:.2e}")
    report_retnet_mini(fixture)


def report_retnet_mini(fixture) -> None:
    """Compare retnet_mini (this checkout) with the official logits just written."""
    sys.path.insert(0, str(ROOT))
    from retnet_mini.model import RetNetLM

    for key, official in fixture["logits"].items():
        model = RetNetLM.from_torchscale(fixture["state_dict"], **dict(fixture["config"], layernorm_eps=float(key)))
        with torch.no_grad():
            ours = {m: model(fixture["tokens"], m)[0] for m in MODES}
        diffs = {m: f"{(ours[m] - official['parallel']).abs().max().item():.1e}" for m in MODES}
        print(f"layernorm_eps={key}: retnet_mini modes vs official parallel: {diffs}")


def _dist_version(name: str) -> str:
    from importlib.metadata import version
    return version(name)


if __name__ == "__main__":
    main()
