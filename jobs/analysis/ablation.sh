#!/usr/bin/env bash
# Module ablation of a MoM or MoE checkpoint: how much loss does each module carry?
#
# Measures (docs/routing.md, "Module ablation"):
#   1. the baseline: `mom route` over DATA (which also gives each module's load share);
#   2. every attention and FFN module of every learned router disabled alone
#      (`mom eval --disable-module STAGE/SIDE/MODULE`); importance = the loss increase;
#   3. per router, the k least important modules disabled together: attention for k up to half
#      of the pool, FFN (and MoE experts) up to a quarter (at least 1): the MoM paper's
#      redundancy claim (MODELS.md §2); then, per MoM chunk, both of those at once.
# A token whose choice is disabled takes its next choice (SKIP when that is next). A removal
# that would leave a router fewer enabled classes than its top_k is reported, not run.
# Writes a markdown table to stdout and, with --out, to a file.
#
# Usage: jobs/analysis/ablation.sh CKPT [DATA] [--batches N] [--seq-len T] [--batch-size B]
#                                  [--threads N] [--out TABLE.md]
#   DATA: token files (a path or a quoted glob; default: the checkpoint's data.val)
#   --batches N: score only the first N batches (default: the whole of DATA); every line of
#     the table scores the same tokens, so the differences are paired.
# Environment: MOM (default: build/mom of this checkout), PYTHON (default /usr/bin/python3, with h5py).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
MOM="${MOM:-$here/build/mom}"
PYTHON="${PYTHON:-/usr/bin/python3}"

die() {
  echo "ablation: $*" >&2
  exit 2
}

ckpt="" data="" out="" opts=()
while (($#)); do
  case "$1" in
    --batches | --seq-len | --batch-size | --threads)
      (($# >= 2)) || die "$1 needs a value"
      opts+=("$1" "$2")
      shift 2
      ;;
    --out)
      (($# >= 2)) || die "--out needs a file"
      out="$2"
      shift 2
      ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    -*) die "unknown option $1 (see --help)" ;;
    *)
      if [[ -z "$ckpt" ]]; then
        ckpt="$1"
      elif [[ -z "$data" ]]; then
        data="$1"
      else
        die "unexpected argument $1 (see --help)"
      fi
      shift
      ;;
  esac
done
[[ -n "$ckpt" ]] || die "usage: ablation.sh CKPT [DATA] [--batches N] [--out TABLE.md] (see --help)"
[[ -f "$ckpt" ]] || die "no checkpoint $ckpt"
[[ -x "$MOM" ]] || die "no mom binary at $MOM: build it (cmake --build build) or set MOM"
if [[ -z "$data" ]]; then
  data="$("$PYTHON" -c 'import h5py, json, sys
c = h5py.File(sys.argv[1], "r").attrs["config"]
print(json.loads(c.decode() if isinstance(c, bytes) else c)["data"]["val"])' "$ckpt")" ||
    die "cannot read data.val from $ckpt's config; pass DATA"
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/mom-ablation.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# 1. Baseline and the routers, from a trace of the same tokens.
echo "ablation: baseline (mom route) over $data ${opts[*]}" >&2
"$MOM" route "$ckpt" --data "$data" --out "$work/base.h5" "${opts[@]}" >"$work/route.txt" ||
  die "mom route failed: $(cat "$work/route.txt")"
# One line per learned router: name, pool size, top_k, classes, load share per class (SKIP last).
"$PYTHON" - "$work/base.h5" >"$work/routers.tsv" <<'EOF'
import h5py, json, sys
import numpy as np
f = h5py.File(sys.argv[1], "r")
text = lambda v: v.decode() if isinstance(v, bytes) else str(v)
print(f"baseline\t{float(f.attrs['mean_loss']):.17g}\t{int(f.attrs['tokens'])}")
for r in json.loads(text(f.attrs["routers"])):
    g = f["trace/" + r]
    C, M, K = int(g.attrs["classes"]), int(g.attrs["modules"]), int(g.attrs["top_k"])
    m = g["modules"][:]
    load = np.bincount(np.where(m < 0, C - 1, m).ravel(), minlength=C) / m.size
    print("\t".join([r, str(M), str(K), str(C), ",".join(f"{x:.4f}" for x in load)]))
EOF
read -r _ base tokens < <(head -n 1 "$work/routers.tsv")
tail -n +2 "$work/routers.tsv" >"$work/r.tsv"
[[ -s "$work/r.tsv" ]] || die "$ckpt has no learned routers (a dense model, or forced routing): nothing to ablate"

# loss of `mom eval` with the given modules disabled, or "n/a" with the reason on stderr.
eval_loss() {
  local args=() m
  for m in "$@"; do args+=(--disable-module "$m"); done
  local res
  if ! res="$("$MOM" eval "$ckpt" --data "$data" --json "${opts[@]}" "${args[@]}" 2>&1)"; then
    echo "ablation: mom eval $* failed: $res" >&2
    echo "n/a"
    return
  fi
  "$PYTHON" -c 'import json, sys; print(repr(json.loads(sys.argv[1])["loss"]))' "$res"
}

# results.tsv: kind, router, disabled paths (space-separated), removed, pool, loss
: >"$work/results.tsv"
# 2. Each module alone.
while IFS=$'\t' read -r r M _ _ _; do
  for ((m = 0; m < M; m++)); do
    echo "ablation: $r/$m alone" >&2
    printf 'single\t%s\t%s\t1\t%s\t%s\n' "$r" "$r/$m" "$M" "$(eval_loss "$r/$m")" >>"$work/results.tsv"
  done
done <"$work/r.tsv"

# 3. The k least important together (k = 1 is the single ablation, not run again).
declare -A claim  # router -> the claim's set (space-separated), for the joint row
while IFS=$'\t' read -r r M K C _; do
  side="${r##*/}"
  if [[ "$side" == "attn" ]]; then kmax=$((M / 2)); else kmax=$((M / 4)); fi
  ((kmax >= 1)) || kmax=1
  # Modules by importance, least first (ties by id).
  mapfile -t order < <(awk -F'\t' -v r="$r" '$1 == "single" && $2 == r { print $6 "\t" $3 }' "$work/results.tsv" |
    sort -t$'\t' -k1,1g -k2,2V | cut -f2)
  for ((k = 1; k <= kmax; k++)); do
    set_k="${order[*]:0:k}"
    if ((C - k < K)); then
      printf 'least\t%s\t%s\t%d\t%s\tcannot: %d of %d classes left, top_k %d\n' "$r" "$set_k" "$k" "$M" \
        $((C - k)) "$C" "$K" >>"$work/results.tsv"
      continue
    fi
    claim[$r]="$set_k"
    if ((k == 1)); then
      printf 'least\t%s\t%s\t1\t%s\t=single\n' "$r" "$set_k" "$M" >>"$work/results.tsv"
      continue
    fi
    echo "ablation: $r least important $k: $set_k" >&2
    # shellcheck disable=SC2086
    printf 'least\t%s\t%s\t%d\t%s\t%s\n' "$r" "$set_k" "$k" "$M" "$(eval_loss $set_k)" >>"$work/results.tsv"
  done
done <"$work/r.tsv"
# Per MoM chunk: half of the attention and a quarter of the FFN modules at once.
while IFS=$'\t' read -r r _ _ _ _; do
  [[ "$r" == */attn ]] || continue
  chunk="${r%/attn}"
  [[ -n "${claim[$r]:-}" && -n "${claim[$chunk/ffn]:-}" ]] || continue
  both="${claim[$r]} ${claim[$chunk/ffn]}"
  echo "ablation: $chunk both: $both" >&2
  # shellcheck disable=SC2086
  printf 'both\t%s\t%s\t-\t-\t%s\n' "$chunk" "$both" "$(eval_loss $both)" >>"$work/results.tsv"
done <"$work/r.tsv"

# 4. The table.
"$PYTHON" - "$work/r.tsv" "$work/results.tsv" "$base" "$tokens" "$ckpt" "$data" "${opts[*]}" >"$work/table.md" <<'EOF'
import sys
rtsv, res, base, tokens, ckpt, data, opts = sys.argv[1:8]
base = float(base)
loads = {}
for line in open(rtsv):
    r, M, K, C, load = line.rstrip("\n").split("\t")
    loads[r] = [float(x) for x in load.split(",")]
def share(r, paths):
    return sum(loads[r][int(p.rsplit("/", 1)[1])] for p in paths.split())
def fmt(loss):
    try:
        v = float(loss)
    except ValueError:
        return loss, "", ""
    return f"{v:.4f}", f"{v - base:+.4f}", f"{100 * (v - base) / base:+.1f}%"
print(f"Ablation of `{ckpt}` on `{data}` ({tokens} tokens{', ' + opts if opts else ''}); "
      f"baseline loss {base:.4f}. Load: the disabled modules' share of the router's choices in the baseline "
      "(all steps, SKIP included).\n")
print("| disabled | router | removed | of the pool | load | loss | Δ loss | Δ |")
print("|---|---|---|---|---|---|---|---|")
print(f"| (none) | | 0 | 0% | | {base:.4f} | | |")
rows = [line.rstrip("\n").split("\t") for line in open(res)]
singles = {}
for kind, r, paths, k, M, loss in rows:
    if kind == "single":
        singles.setdefault(r, []).append((paths, loss))
for kind, r, paths, k, M, loss in rows:
    if kind == "single":
        l, d, p = fmt(loss)
        print(f"| `{paths}` | {r} | 1 | {100 / int(M):.0f}% | {share(r, paths):.3f} | {l} | {d} | {p} |")
for kind, r, paths, k, M, loss in rows:
    if kind == "least":
        if loss == "=single":
            loss = next(l for pth, l in singles[r] if pth == paths)
        l, d, p = fmt(loss)
        names = ", ".join(f"`{x}`" for x in paths.split())
        print(f"| {k} least important: {names} | {r} | {k} | {100 * int(k) / int(M):.0f}% | "
              f"{share(r, paths):.3f} | {l} | {d} | {p} |")
for kind, r, paths, k, M, loss in rows:
    if kind == "both":
        l, d, p = fmt(loss)
        names = ", ".join(f"`{x}`" for x in paths.split())
        print(f"| both of the above: {names} | {r} | | | | {l} | {d} | {p} |")
EOF
cat "$work/table.md"
if [[ -n "$out" ]]; then
  cp "$work/table.md" "$out"
  echo "ablation: wrote $out" >&2
fi
