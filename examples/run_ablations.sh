#!/usr/bin/env bash
# The EmoVerse paper's ablations (Tables 2, 3 and 5) on the EmoVerse-4B config: fit, then test, each
# run into $OUT/NAME/{fit,test}/, then one table of every run's test metrics ($OUT/results.md + .csv + .html charts).
#
# Usage:  examples/run_ablations.sh [NAME...]      (default: every run listed in RUNS below)
# Env:    BASE   the shared config (default examples/configs/m2se_4b.yaml)
#         OUT    where runs and results go (default runs/ablations)
#         EXTRA  more arguments for every fit and test, e.g. EXTRA="--trainer.devices 2"
# Re-running resumes: a run with a last.ckpt continues from it (a finished one ends at once), and a
# test newer than its checkpoint is not repeated.
#
# One run by hand (what this script does for NAME=table3_mer):
#   emoverse fit  --config examples/configs/m2se_4b.yaml --config examples/configs/ablations/table3_mer.yaml
#   emoverse test --config examples/configs/m2se_4b.yaml --config examples/configs/ablations/table3_mer.yaml \
#                 --ckpt_path runs/table3_mer/version_0/checkpoints/last.ckpt
#   emoverse collect runs/table3_mer ... --out results/
set -euo pipefail
cd "$(dirname "$0")/.."

BASE=${BASE:-examples/configs/m2se_4b.yaml}
OUT=${OUT:-runs/ablations}
EXTRA=${EXTRA:-}
ABLATIONS=examples/configs/ablations

# NAME=OVERRIDE ("" = the base alone). Paper rows: Table 2 (6:1:3, 6:3:1 = Table 3's "first stage"),
# Table 3 (MER; MER+ERI+ECPE; MER+ERI+ECPE+MSA = m2se), Table 5 (MSA, MER, ECPE single-task; m2se).
RUNS=(
  "m2se="
  "table2_fer_low=$ABLATIONS/table2_fer_low.yaml"
  "table2_fer_high=$ABLATIONS/table2_fer_high.yaml"
  "table3_mer=$ABLATIONS/table3_mer.yaml"
  "table3_mer_eri_ecpe=$ABLATIONS/table3_mer_eri_ecpe.yaml"
  "table5_msa=$ABLATIONS/table5_msa.yaml"
  "table5_mer=$ABLATIONS/table5_mer.yaml"
  "table5_ecpe=$ABLATIONS/table5_ecpe.yaml"
)

# fit + test one run: run NAME OVERRIDE
run() {
  local name=$1 override=$2 dir=$OUT/$1
  local configs=(--config "$BASE")
  [ -n "$override" ] && configs+=(--config "$override")
  # logs, config.yaml and checkpoints go to $dir/fit (CSVLogger save_dir/name/version)
  local logger=(--trainer.logger.init_args.save_dir "$OUT" --trainer.logger.init_args.name "$name")
  local ckpt=$dir/fit/checkpoints/last.ckpt resume=()
  [ -f "$ckpt" ] && resume=(--ckpt_path "$ckpt")
  echo "== $name: fit ${resume[*]:-}" >&2
  # shellcheck disable=SC2086  # EXTRA is split into arguments on purpose
  emoverse fit "${configs[@]}" "${logger[@]}" --trainer.logger.init_args.version fit "${resume[@]}" $EXTRA
  if [ -f "$dir/test/metrics.csv" ] && [ "$dir/test/metrics.csv" -nt "$ckpt" ]; then
    echo "== $name: test is up to date" >&2
    return
  fi
  echo "== $name: test $ckpt" >&2
  # shellcheck disable=SC2086
  emoverse test "${configs[@]}" "${logger[@]}" --trainer.logger.init_args.version test --ckpt_path "$ckpt" $EXTRA
}

names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  for entry in "${RUNS[@]}"; do names+=("${entry%%=*}"); done
fi
dirs=()
for name in "${names[@]}"; do
  override=
  for entry in "${RUNS[@]}"; do
    [ "${entry%%=*}" = "$name" ] && { override=${entry#*=}; found=1; }
  done
  [ -n "${found:-}" ] || { echo "unknown run '$name'; known: ${RUNS[*]%%=*}" >&2; exit 2; }
  unset found
  run "$name" "$override"
  dirs+=("$OUT/$name")
done

emoverse collect "${dirs[@]}" --out "$OUT"
