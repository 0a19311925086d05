#!/bin/sh
# Makes a Wine prefix that runs Go binaries: Debian 12's Wine 8.0 lacks
# ProcessPrng in bcryptprimitives.dll, which Go's runtime loads at start,
# so this builds a stand-in (shim/bcryptprimitives.c) with mingw-w64 and puts
# it in the prefix's system32. For tests only.
#
#   WINEPREFIX=/tmp/wine tools/wine/setup.sh
set -eu
: "${WINEPREFIX:?set WINEPREFIX to the prefix to make}"
export WINEPREFIX WINEDEBUG=-all
here=$(cd "$(dirname "$0")" && pwd)
wine=$(command -v wine64 || echo /usr/lib/wine/wine64)
if [ ! -f "$WINEPREFIX/system.reg" ]; then
	"$wine" wineboot -i >/dev/null 2>&1
fi
x86_64-w64-mingw32-gcc -shared -O2 -o "$WINEPREFIX/drive_c/windows/system32/bcryptprimitives.dll" \
	"$here/shim/bcryptprimitives.c" "$here/shim/bcryptprimitives.def" -ladvapi32
echo "$wine"
