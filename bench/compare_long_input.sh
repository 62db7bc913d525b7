#!/bin/sh
# Compare the long-input policies of one aligned model by validation retrieval (qvimclap eval-retrieval).
#
# usage: bench/compare_long_input.sh MODEL_DIR CORPUS WORK_DIR
# Each policy gets a copy of the model folder (config.json edited, weights and split.json copied) under
# WORK_DIR; prints: policy[:hop as a fraction of the clip] space queries MRR R@1 R@5 class-NDCG.
# The README's table: qvimclap synth corpus --refs 200 --imitations 3 --seed 1
#                     qvimclap align --data corpus --out m2s --clip-seconds 2 --epochs 6 --val-fraction 0.3
#                     bench/compare_long_input.sh m2s corpus /tmp/long-input
set -e
model=$1; corpus=$2; work=$3
qvimclap=${QVIMCLAP:-.venv/bin/qvimclap}
for spec in start windows-mean:0.5 windows-mean:1.0 windows-max:0.5 whole; do
  policy=${spec%%:*}; hop=${spec#*:}; [ "$hop" = "$spec" ] && hop=
  dir=$work/$(echo "$spec" | tr ':' '_')
  rm -rf "$dir"; mkdir -p "$dir"
  cp "$model/config.json" "$model/model.safetensors" "$dir/"
  [ -f "$model/split.json" ] && cp "$model/split.json" "$dir/"
  python3 - "$dir/config.json" "$policy" "$hop" <<'PY'
import json, sys
path, policy, hop = sys.argv[1], sys.argv[2], sys.argv[3]
config = json.load(open(path))
config["long_input"] = policy
config["window_hop_s"] = float(hop) * config["clip_duration_s"] if hop else None
json.dump(config, open(path, "w"), indent=2)
PY
  for space in clap qvim; do
    "$qvimclap" eval-retrieval --data "$corpus" --model "$dir" --split val --space "$space" --json \
      | python3 -c "import json,sys; r=json.load(sys.stdin); m=r['metrics']; print('$spec', '$space', r['num_queries'], *(round(m[k], 4) for k in ('mrr', 'recall@1', 'recall@5', 'class_ndcg')))"
  done
done
