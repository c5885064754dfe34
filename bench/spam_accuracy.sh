#!/usr/bin/env bash
# The spam classifier's accuracy on the shared corpus (SpamAssassin public corpus training
# set: 2,920 ham, 1,393 spam), by 5-fold cross-validation at several thresholds, through the
# classifier and the content rules (the score the MX gives less authentication and blocklists).
#
# usage: bench/spam_accuracy.sh [CORPUS]     (default ../shared/data/spam-corpus)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CORPUS=${1:-$ROOT/../shared/data/spam-corpus}
(cd "$ROOT" && cargo build --release --bin mailkeep)
for t in 0.5 0.7 0.8 0.9; do
  echo "== threshold $t"
  "$ROOT/target/release/mailkeep" spam test --ham "$CORPUS/ham" --spam "$CORPUS/spam" --threshold "$t" | tail -2
done
