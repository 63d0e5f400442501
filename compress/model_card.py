"""MODEL_CARD.md for a shipped model, rendered from its manifest and a benchmark JSON.

Generated, not hand-written, so the figures in the card are exactly the measured ones.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..runtime.imageio import write_text_atomic
from ..runtime.manifest import Manifest


def _training_line(m: Manifest):
    step, held, soup = m.extra.get("checkpoint_step"), m.extra.get("holdout"), m.extra.get("soup")
    rec = m.extra.get("recovered_from")
    if rec and rec.get("as_shipped"):   # `edgecut export NAME`: a shipped model in another format
        return (f"- training: the weights of `{rec['model']}` (sha256 {str(rec.get('sha256'))[:8]}), recovered from "
                "its int8 file with every calibration left folded in and written again in this format and "
                "precision (`edgecut export NAME`); no training since")
    if m.extra.get("ensemble"):   # its members' lines say where each came from
        return None
    if soup:   # `compress soup`: no step of its own
        return f"- training: weight soup (mean of the weights) of {len(soup)} runs: {', '.join(soup)}"
    if rec and not step:   # `compress recover`, exported as it came back
        member = f" (member {rec['member']})" if rec.get("member") is not None else ""
        return (f"- training: weights recovered from the int8 file of `{rec['model']}`{member} "
                f"(`edgecut compress recover`, sha256 {str(rec.get('sha256'))[:8]}), no training since")
    if step is None:
        return None
    line = f"- training: checkpoint at step {step}"
    if held:
        line += f"; held-out agreement with the teacher IoU {held['iou']:.4f}, MAE {held['mae']:.4f}"
    return line


def _ensemble_lines(m: Manifest) -> list:
    members = m.extra.get("ensemble") or []
    lines = []
    for i, e in enumerate(members, 1):
        what = f"weight soup of {len(e['soup'])} runs" if e.get("soup") else f"`{e.get('source')}`"
        cal = e.get("calibration")
        lines.append(f"- member {i}: {what}, run at {e['input_size']}x{e['input_size']}"
                     + (", pruned graph" if e.get("pruned") else "")
                     + (f"; own calibration {calibration_formula(cal)} before the mean"
                        if cal else ""))
    return lines


def calibration_formula(cal: dict) -> str:
    """A logit calibration as people read it, the same in the CLI, the logs and the cards."""
    return f"alpha = sigmoid({cal['scale']:.3f} z {cal['shift']:+.3f})"


def calibration_outcome(cal: dict) -> str:
    """What a fit did, in one line: export --calibrate and compress ensemble print it alike."""
    scores = (f"2-fold cross-validated IoU {cal['before']['iou']:.4f} -> {cal['after']['iou']:.4f}, "
              f"MAE {cal['before']['mae']:.4f} -> {cal['after']['mae']:.4f}")
    if cal.get("applied") is False:
        return f"calibration not applied: on {cal['photos_fit']} held-out photos, {scores}, worse than none"
    return f"calibrated on {cal['photos_fit']} held-out photos: {calibration_formula(cal)}; {scores}"


def _calibration_line(m: Manifest):
    cal = m.extra.get("calibration")
    if not cal:
        return None
    checked = ("on the same photos, each half scored with the fit on the other half," if cal.get("check") == "2-fold"
               else f"on {cal['photos_checked']} others")
    if cal.get("applied") is False:
        return (f"- logit calibration: none. A fit on {cal['photos_fit']} held-out training photos scored worse "
                f"than no calibration by 2-fold cross-validation on them: IoU {cal['before']['iou']:.4f} -> "
                f"{cal['after']['iou']:.4f}, MAE {cal['before']['mae']:.4f} -> {cal['after']['mae']:.4f}")
    return (f"- logit calibration folded into the head: {calibration_formula(cal)}, "
            f"fitted on {cal['photos_fit']} held-out training photos; {checked} MAE "
            f"{cal['before']['mae']:.4f} -> {cal['after']['mae']:.4f}, IoU {cal['before']['iou']:.4f} -> "
            f"{cal['after']['iou']:.4f}")


def _portable_line(q: dict):
    p = q.get("portable")
    if not p:
        return None
    seven = p.get("seven_bit_gemm_weights")
    return (f"- portable int8: Resize in float and {p.get('shared_scale_groups', '?')} residual groups on one "
            "scale each" + (f", and {seven} non-depthwise convolutions with 7-bit weights (within +-64, so x86 "
                            "without VNNI cannot saturate its int16 pair sums; `compress/seven_bit.py`)"
                            if seven else "")
            + ", so the int8 arithmetic is exact: onnxruntime gives the same alpha on x86 and ARM "
            "(`make arm-check`)")


def _padding_line(manifest):
    p = manifest.extra.get("padding")
    if not p:
        return None
    return (f"- channels: {len(p['convs'])} convolutions widened with zero channels, so that the depthwise "
            f"streams have multiples of {p['multiple']} channels, where onnxruntime's uint8 kernels are faster: "
            "the same sums (`compress/pad_channels.py`)")


def _pruning_line(m: Manifest):
    p = m.extra.get("pruned")
    if not p:
        return None
    fewer = 100 * (1 - p["macs"] / p["base_macs"])
    try:   # pruning counts MACs at the variant's own size (recover: the member's), which an export may have changed
        from ..models.variants import get_variant

        size = p.get("input_size") or get_variant(m.architecture).input_size
        at = f" at {size}x{size}" if size != m.input_size[0] else ""
    except KeyError:
        at = ""
    if p.get("recovered"):   # recovered from an ensemble member: how it was pruned is not in the file
        return (f"- pruned graph, as in `{p.get('source')}`: {p['macs'] / 1e6:.0f}M MACs{at} against "
                f"{p['base_macs'] / 1e6:.0f}M for the unpruned variant ({fewer:.0f}% fewer), "
                f"{p['params']:,} parameters against {p['base_params']:,}")
    return (f"- pruned from `{p.get('source')}` ({p['base_macs'] / 1e6:.0f}M MACs, {p['base_params']:,} "
            f"parameters) to {p['macs'] / 1e6:.0f}M MACs{at} ({fewer:.0f}% fewer), {p.get('importance')} importance, "
            f"channels rounded to {p.get('round_to')}, then recovered by distillation")


def render(manifest: Manifest, bench: dict | None = None, command: str = "") -> str:
    q = manifest.extra.get("quantization", {})
    members = manifest.extra.get("ensemble") or []
    # A hand-written manifest may leave params and macs out (null): the card says so, not a traceback.
    params = f"{manifest.params:,}" if manifest.params is not None else "an unrecorded number of"
    macs = f"{manifest.macs / 1e6:.0f}M" if manifest.macs is not None else "unrecorded"
    size = f"{manifest.input_size[1]}x{manifest.input_size[0]}"
    what = (f"An ensemble of {len(members)} students, `{manifest.architecture}` ({params} parameters in all, "
            f"{macs} MACs at {size}), in one graph: each "
            "member sees the photo at its own size and their logits are averaged. It"
            if members else
            f"An `{manifest.architecture}` student ({params} parameters, {macs} MACs at {size}) that")
    lines = [
        f"# {manifest.name}",
        "",
        f"{what} predicts a soft alpha matte for the salient subject of a photo. Trained from scratch by "
        "knowledge distillation (no pretrained backbone).",
        "",
        "## Facts",
        f"- format: {manifest.format}, precision: {manifest.precision}"
        + (f" ({q.get('format')}, weights {q.get('weights')}, activations {q.get('activations')}, "
           f"{q.get('calibration')} calibration on {q.get('calibration_photos')} photos)" if q else ""),
        f"- input: RGB stretched to {manifest.input_size[1]}x{manifest.input_size[0]}, (x/255 - mean) / std with "
        f"mean {list(manifest.mean)}, std {list(manifest.std)}, {manifest.layout} float32; output `{manifest.output_name}`: "
        "alpha in [0, 1]",
        f"- sha256: `{manifest.sha256}`",
        f"- ops left in float after quantization: {q.get('float_ops') or 'none'}" if q else None,
        _portable_line(q),
        "- stem: the 3x3 stride-2 int8 convolution runs as a 2x2 convolution over SpaceToDepth(2): the same "
        "integer sums, faster in onnxruntime (`compress/space_to_depth.py`)"
        if str(q.get("stem", "")).startswith("space-to-depth") else None,
        f"- data movement on uint8: {q['uint8_moves']} quantize steps moved before the Gathers, Transposes and "
        "SpaceToDepth that followed them (the same integers, a quarter of the bytes; `compress/uint8_moves.py`)"
        if q.get("uint8_moves") else None,
        _padding_line(manifest),
        "- quantization-aware: fine-tuned with fake int8 rounding (`edgecut compress qat`) before this int8 "
        "export" if manifest.extra.get("qat") else None,
        *_ensemble_lines(manifest),
        _pruning_line(manifest),
        _training_line(manifest),
        _calibration_line(manifest),
        "",
        "## Provenance",
        f"- teacher: {manifest.teacher}",
        f"- training data: {manifest.data}",
        f"- licence: {manifest.license}",
        "",
        "The training photos are research-use sets (Caltech-101, ImageNet subsets, Shen et al. 2016 portraits, "
        "Clothing Co-Parsing, cats and dogs, grocery shelves"
        + ("; the CC0 clothing photos add no restriction" if "clothing" in manifest.data else "")
        + "): the weights inherit those terms and "
        "are meant for research and evaluation. The teacher (AGPL-3.0) only labelled photos; none of its weights "
        "are in this model.",
        "",
        "## Intended use and limits",
        "- Background removal of one main subject (people, products, animals, objects) on CPU and mobile.",
        "- Low-contrast subjects, thin structures (hair strands, bicycle spokes) and scenes with several "
        "subjects are its weak points; its alpha is only as good as the teacher's on the training photos.",
    ]
    if manifest.notes:
        lines += ["", "## Notes", manifest.notes]
    if bench:
        from ..bench.accuracy import results_table

        lines += ["", "## Measured accuracy (human-labelled masks of ../shared/data/bench)", "", "```",
                  results_table(bench["models"]), "```"]
        if command or bench.get("command"):
            lines += ["", f"Made with `{command or bench['command']}` on {bench.get('machine', {}).get('cpu', '?')}."]
    return "\n".join(line for line in lines if line is not None) + "\n"


def read_bench(path) -> dict:
    """The results of `edgecut bench accuracy --json`, or an EdgecutError saying why a file is not."""
    from ..runtime.errors import EdgecutError

    try:
        bench = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EdgecutError(f"{path}: not a bench JSON ({getattr(e, 'msg', None) or 'not UTF-8 text'})") from None
    models = bench.get("models") if isinstance(bench, dict) else None
    ok = isinstance(models, list) and models and all(
        isinstance(m, dict) and isinstance(m.get("name"), str) and isinstance(m.get("sets"), dict)
        and isinstance(m.get("mean"), dict) and all(isinstance(v, dict) for v in m["sets"].values())
        for m in models)
    if not ok:
        raise EdgecutError(f"{path}: not the results of `edgecut bench accuracy --json` "
                           "(needs models, each with name, sets and mean)")
    if not isinstance(bench.get("machine", {}), dict):   # the card reads its cpu
        raise EdgecutError(f"{path}: 'machine' is not an object (bench accuracy writes {{\"cpu\": ...}})")
    return bench


def write(folder, bench_json=None, command: str = "") -> Path:
    folder = Path(folder)
    manifest = Manifest.load(folder / "manifest.json")
    bench = read_bench(bench_json) if bench_json else None
    return write_text_atomic(folder / "MODEL_CARD.md", render(manifest, bench, command))
