#!/usr/bin/env bash
# Prints what each bad input from README.md's Troubleshooting table makes the CLI print.
# Run with the project's python on PATH: bash tests/bad_inputs.sh
set -u
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
cd "$work" && mkdir -p d
PYTHONPATH="$repo" python -c "
import sys; sys.path.insert(0,'$repo/tests'); from conftest import write_tiny_dataset; write_tiny_dataset('d')"
mkdir -p d/mine d/hdr d/ts && printf "user_id:token\n1\n" > d/mine/mine.user && printf "user_id\titem_id\ttimestamp\n1\t2\t3\n" > d/hdr/hdr.inter && printf "user_id:token\titem_id:token\ttimestamp:float\n1\t2\t3\n1\t2\tyesterday\n" > d/ts/ts.inter && printf "epochs: [1, 2\n" > bad.yaml && echo junk > junk.pth
R="python $repo/run_recbole_mind.py"
T="--dataset tiny --data_path=d --epochs=1 --topk=[5,10] --MAX_ITEM_LIST_LENGTH=10"
run(){ echo "\$ python run_recbole_mind.py $*" | sed "s#--data_path=d --epochs=1 --topk=\[5,10\] --MAX_ITEM_LIST_LENGTH=10#...#"; $R "$@" 2>"$work/err" >/dev/null; code=$?; tail -1 "$work/err"; echo "(exit $code, $(wc -l < "$work/err") line)"; }
run --dataset no-such-data
run --dataset mine --data_path=d
run --dataset hdr --data_path=d
run --dataset ts --data_path=d
run --config_files nope.yaml
run --config_files bad.yaml
run -m Nope
for o in --interest_num=0 --routing_iterations=0 --attention_power=0 --embedding_size=0 --MAX_ITEM_LIST_LENGTH=0 --loss_type=XE "--loss_type=SSM --num_negatives=0" "--user_features=['shoe_size']" "--item_features=['shoe_size']"; do run $T $o; done
run $T --resume gone.pth
run $T --resume junk.pth
mkdir -p d/short && printf "user_id:token\titem_id:token\ttimestamp:float\n1\t1\t1\n1\t2\t2\n1\t3\t3\n" > d/short/short.inter
run --dataset short --data_path=d
PYTHONPATH="$repo" python -c "
import torch; torch.save({'state_dict': {}, 'config': {'model': 'MIND'}}, 'old.pth')"
run --retrieve --checkpoint old.pth
rm -rf "$work"
