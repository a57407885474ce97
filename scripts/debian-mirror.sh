#!/usr/bin/env bash
# Print the Debian mirror this machine's apt uses for SUITE (default: bookworm).
#
# Read at run time from /etc/apt/sources.list and /etc/apt/sources.list.d/*.{list,sources}, so no
# mirror is written into the repository: the images are built from whatever mirror the machine
# already trusts. Prints the first URI that serves SUITE with the main component.
set -euo pipefail
suite="${1:-bookworm}"

files=()
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] && files+=("$f")
done
[ ${#files[@]} -gt 0 ] || { echo "no apt sources on this machine" >&2; exit 1; }

for f in "${files[@]}"; do
  awk -v suite="$suite" '
  function found(uri) { if (done) return; sub(/\/+$/, "", uri); print uri; done = 1; exit }
  # one-line format: deb [options] URI SUITE COMPONENT...
  /^[[:space:]]*deb[[:space:]]/ {
    n = split($0, w, /[[:space:]]+/); i = 2; if (w[1] == "") i++
    if (w[i] ~ /^\[/) { while (i <= n && w[i] !~ /\]$/) i++; i++ }
    if (w[i + 1] == suite) for (j = i + 2; j <= n; j++) if (w[j] == "main") found(w[i])
    next
  }
  # deb822 format: stanzas of Types/URIs/Suites/Components, separated by blank lines
  /^[[:space:]]*$/ { check(); next }
  /^[[:space:]]*#/ { next }
  { key = tolower($1); sub(/:$/, "", key); $1 = ""; s[key] = s[key] " " $0 }
  function check(   u, su, c, nu, ns, nc, a, b) {
    if (s["types"] ~ /(^| )deb( |$)/ && s["enabled"] !~ /no/) {
      ns = split(s["suites"], su, " "); nc = split(s["components"], c, " ")
      for (a = 1; a <= ns; a++) if (su[a] == suite)
        for (b = 1; b <= nc; b++) if (c[b] == "main") { split(s["uris"], u, " "); found(u[1]) }
    }
    delete s
  }
  END { if (!done) check(); if (!done) exit 1 }
  ' "$f" && exit 0
done
echo "no apt source serves $suite main on this machine" >&2
exit 1
