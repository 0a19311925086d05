package bridge

import (
	"io"
	"mime"
	netmail "net/mail"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/smtpbridge/smtpbridge/internal/header"
	"github.com/smtpbridge/smtpbridge/internal/mailaddr"
	"github.com/smtpbridge/smtpbridge/message"
)

// The sender policy's view of the header block (package header reads it).

var wordDecoder = &mime.WordDecoder{CharsetReader: func(_ string, r io.Reader) (io.Reader, error) {
	// Unknown charsets keep their bytes; the display name is only cosmetic.
	return r, nil
}}

// parseFrom parses a From value into its first address and display name.
// Raw 8-bit text is taken as UTF-8, else as Latin-1 (what old devices
// send); a value net/mail cannot parse whole still gives up a
// "name <address>" at its end, so that the device's name is kept.
func parseFrom(v string) (name string, addr mailaddr.Address, ok bool) {
	if !utf8.ValidString(v) {
		v = latin1(v)
	}
	p := netmail.AddressParser{WordDecoder: wordDecoder}
	list, err := p.ParseList(v)
	if err != nil || len(list) == 0 {
		return lenientFrom(v)
	}
	a, err := mailaddr.Parse(list[0].Address)
	if err != nil {
		return list[0].Name, mailaddr.Address{}, false
	}
	return list[0].Name, a, true
}

// lenientFrom reads "name <address>" from the end of a From value that
// net/mail refused.
func lenientFrom(v string) (name string, addr mailaddr.Address, ok bool) {
	v = strings.TrimSpace(v)
	i := strings.LastIndexByte(v, '<')
	if i < 0 || !strings.HasSuffix(v, ">") {
		return "", mailaddr.Address{}, false
	}
	a, err := mailaddr.Parse(v[i+1 : len(v)-1])
	if err != nil {
		return "", mailaddr.Address{}, false
	}
	name = strings.TrimSpace(v[:i])
	if dec, err := wordDecoder.DecodeHeader(name); err == nil {
		name = dec
	}
	return strings.Trim(name, `"`), a, true
}

// latin1 reads s as ISO 8859-1.
func latin1(s string) string {
	r := make([]rune, len(s))
	for i := 0; i < len(s); i++ {
		r[i] = rune(s[i])
	}
	return string(r)
}

// fromAddresses parses every address of a From value. RFC 5322 allows
// several authors; the enforce policy must check each, or a second one
// would ride along unchecked.
func fromAddresses(v string) ([]mailaddr.Address, bool) {
	p := netmail.AddressParser{WordDecoder: wordDecoder}
	list, err := p.ParseList(v)
	if err != nil || len(list) == 0 {
		return nil, false
	}
	out := make([]mailaddr.Address, 0, len(list))
	for _, a := range list {
		pa, err := mailaddr.Parse(a.Address)
		if err != nil {
			return nil, false
		}
		out = append(out, pa)
	}
	return out, true
}

// cleanDisplayName makes a device's display name safe to keep in front of
// the mailbox address. Exchange's SendAs check reads an "@" in a display
// name as an address (554 5.2.252), so it becomes " at "; control
// characters, quotes and backslashes go, and the result is bounded. An
// ASCII name goes out quoted, where nothing else means anything; a name
// with other characters goes out as an RFC 2047 encoded word, which cannot
// be quoted, so RFC 5322's specials go from it too: once decoded, a comma
// would end an address and an angle bracket start one.
func cleanDisplayName(s string) string {
	s = strings.ReplaceAll(s, "@", " at ")
	ascii := true
	for _, r := range s {
		if r >= utf8.RuneSelf {
			ascii = false
			break
		}
	}
	s = strings.Map(func(r rune) rune {
		switch {
		case r == '"' || r == '\\' || r == '<' || r == '>':
			return ' '
		case !ascii && strings.ContainsRune(",;:()[]", r):
			return ' '
		case unicode.IsControl(r) || !unicode.IsPrint(r):
			return ' '
		}
		return r
	}, s)
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > 64 {
		s = strings.TrimSpace(string(r[:64]))
	}
	return s
}

// rewriteFrom applies the rewrite policy to h: From becomes the mailbox
// with the cleaned display name, the original address goes to Reply-To when
// the message had none, and Sender (which would name another address) is
// dropped. It returns the original From address, if one parsed.
func rewriteFrom(h *header.Header, mailbox mailaddr.Address) (orig mailaddr.Address, had bool) {
	f, i := h.Get("from")
	var name string
	if i >= 0 {
		name, orig, had = parseFrom(f.Value())
	}
	from := formatField("From", netmail.Address{Name: cleanDisplayName(name), Address: mailbox.String()})
	// Every From field goes: a second one would be an author the
	// rewrite left standing.
	if i < 0 {
		i = len(h.Fields)
	}
	h.Remove("from")
	h.Fields = slices.Insert(h.Fields, min(i, len(h.Fields)), from)
	if _, ri := h.Get("reply-to"); ri < 0 && had && !orig.Equal(mailbox) {
		h.Fields = append(h.Fields, formatField("Reply-To", netmail.Address{Address: orig.String()}))
	}
	h.Remove("sender")
	return orig, had
}

// formatField is an address field. netmail.Address.String quotes and RFC
// 2047-encodes the name as needed, so nothing a device sends can end the
// line early.
func formatField(name string, a netmail.Address) header.Field {
	return header.NewField(name, a.String())
}

func mailAddress(a mailaddr.Address) netmail.Address { return netmail.Address{Address: a.String()} }

// messageID is the message's Message-ID without its angle brackets, cut
// to 256 bytes and cleaned for the log; "" when there is none.
func messageID(h *header.Header) string {
	f, i := h.Get("message-id")
	if i < 0 {
		return ""
	}
	id := strings.TrimSpace(f.Value())
	id = strings.TrimSuffix(strings.TrimPrefix(id, "<"), ">")
	if len(id) > 256 {
		id = id[:256]
	}
	return message.CleanText(id)
}
