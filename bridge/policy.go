package bridge

import (
	"github.com/smtpbridge/smtpbridge/internal/mailaddr"
)

// senderAllowed is the enforce policy: the mailbox itself, or an address
// in allowed_from. Exchange will still refuse (5.7.60, 5.2.252) an
// allowed_from address the mailbox has no SendAs right for.
func (dev *Device) senderAllowed(a mailaddr.Address) bool {
	return a.Equal(dev.Mailbox) || dev.AllowedFrom.Match(a)
}

// RecipientAllowed checks allowed_recipients; an empty list allows any.
func (dev *Device) RecipientAllowed(a mailaddr.Address) bool {
	return len(dev.AllowedRecipients) == 0 || dev.AllowedRecipients.Match(a)
}
