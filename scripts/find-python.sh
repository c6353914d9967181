#!/usr/bin/env bash
# Print the path of a Python >= 3.12 interpreter, or explain what is needed and fail.
# Order: $PYTHON, python3.12 / python3.13 / python3 on PATH, then pyenv versions.
set -u
ok() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; }
for cand in ${PYTHON:-} python3.12 python3.13 python3; do
  [ -n "$cand" ] || continue
  path=$(command -v "$cand" 2>/dev/null) || continue
  if ok "$path"; then echo "$path"; exit 0; fi
done
if command -v pyenv >/dev/null 2>&1; then
  root=$(pyenv root)
  for v in $(ls "$root/versions" 2>/dev/null | grep "^3\.12" ; ls "$root/versions" 2>/dev/null | sort -rV); do
    for exe in "$root/versions/$v/bin/python3"; do
      if [ -x "$exe" ] && ok "$exe"; then echo "$exe"; exit 0; fi
    done
  done
fi
echo "bayescannon needs Python >= 3.12 (PyMC 6 does not support older versions)." >&2
echo "Install one (e.g. 'pyenv install 3.12') or set PYTHON=/path/to/python3.12." >&2
exit 1
