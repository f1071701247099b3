#!/usr/bin/env bash
# Run study files one after another from the /work/wt-run snapshot; each into runs/<name>.db.
# Usage: run_studies.sh NAME [NAME...]   (a NAME may carry extra args after a colon-free '|': name|--set a=b)
set -u
export PYTHONPATH=/work/wt-run TMAFBENCH_DATA=/work/shared/data
cd /work/wt-run
for entry in "$@"; do
  name="${entry%%|*}"; extra=""; [[ "$entry" == *"|"* ]] && extra="${entry#*|}"
  db="/work/main/runs/${name}.db"
  start=$(date +%s)
  echo "$(date -u +%H:%M:%S) start $name $extra" >> /work/main/runs/progress.log
  /work/main/.venv/bin/python -c "import sys; from tmafbench.cli import main; sys.argv[0] = 'tmafbench'; main()" study run "studies/${name}.toml" --workers 2 --pack auto \
      --storage "sqlite:///${db}" $extra > "/work/main/runs/${name}.log" 2>&1
  code=$?
  echo "$(date -u +%H:%M:%S) end $name exit=$code wall=$(( $(date +%s) - start ))s" >> /work/main/runs/progress.log
done
