/*
 * A stand-in for bcryptprimitives.dll's ProcessPrng, which Go's runtime
 * (1.22 and later) loads at start and Debian 12's Wine 8.0 lacks. For
 * running Go test binaries under Wine in CI only: it never ships.
 */
#include <windows.h>

#define RtlGenRandom SystemFunction036
BOOLEAN NTAPI RtlGenRandom(PVOID buf, ULONG len);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
	while (len > 0) {
		ULONG n = len > 0x10000000 ? 0x10000000 : (ULONG)len;
		if (!RtlGenRandom(data, n))
			return FALSE;
		data += n;
		len -= n;
	}
	return TRUE;
}
