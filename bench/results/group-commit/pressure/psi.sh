#!/bin/bash
# psi.sh OUT: every second, "epoch some_total_us" of /proc/pressure/cpu, plus /proc/stat idle
while :; do echo "$(date +%s.%N) $(awk '/^some/{split($5,a,"="); print a[2]}' /proc/pressure/cpu) $(awk '/^cpu /{print $5+$6, $2+$3+$4+$5+$6+$7+$8}' /proc/stat)"; sleep 1; done > "$1"
