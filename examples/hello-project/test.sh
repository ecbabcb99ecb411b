#!/bin/sh
# A tiny project "test suite": checks that add.sh adds.
set -e
result=$(sh ./add.sh 2 3)
if [ "$result" = "5" ]; then echo "PASS: 2 + 3 = 5"; else echo "FAIL: 2 + 3 = $result"; exit 1; fi
