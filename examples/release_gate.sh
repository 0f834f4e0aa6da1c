#!/usr/bin/env bash
# A model-release gate: quantize, then fail the build (exit 1) when the int4 model drops below
# the agreement or accuracy thresholds. Bad input exits 2, as every zerop-deploy command does.
#
#   examples/release_gate.sh model.onnx labelled.npz [MIN_AGREEMENT=0.95] [MAX_ACCURACY_DROP=1.0]
#
# Environment: ZEROP_STEPS (default 500), ZEROP_PROXY (default builtin).
set -euo pipefail
model=$1
labelled=$2
min_agreement=${3:-0.95}
max_drop=${4:-1.0}
out=${model%.onnx}.int4.onnx

zerop-deploy quantize "$model" --bits 4 --proxy "${ZEROP_PROXY:-builtin}" \
    --steps "${ZEROP_STEPS:-500}" --quiet -o "$out"
# the exported file, checked in onnxruntime on the labelled set; exit 1 under the agreement
zerop-deploy validate "$out" --reference "$model" --data "$labelled" \
    --min-agreement "$min_agreement" --json > "${out%.onnx}.gate.json"
python3 - "${out%.onnx}.gate.json" "$max_drop" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
acc = doc.get("accuracy")
if acc is None:
    sys.exit(f"gate: {sys.argv[1]}: the data has no labels, accuracy cannot be gated")
drop = 100 * (acc["fp32"] - acc["quantized"])
print(f"gate: agreement {100 * doc['fp32_vs_quant_top1_agreement']:.2f} %, "
      f"accuracy {100 * acc['fp32']:.2f} % -> {100 * acc['quantized']:.2f} % (drop {drop:.2f})")
if drop > float(sys.argv[2]):
    print(f"gate: FAILED, accuracy drop {drop:.2f} > {sys.argv[2]} points", file=sys.stderr)
    sys.exit(1)
print("gate: passed")
PY
