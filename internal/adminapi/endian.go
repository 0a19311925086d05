package adminapi

import "encoding/binary"

// littleEndian is the machine's byte order, which /proc/net/tcp's
// addresses are in.
var littleEndian = binary.NativeEndian.Uint16([]byte{1, 0}) == 1
