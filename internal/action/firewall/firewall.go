// Package firewall is the guard's packet filter: it drops all traffic from
// an address in a chain of our own, hooked into INPUT by one jump.
//
// Firewall is the narrow interface the rest of the guard uses. IPTables
// implements it with iptables/ip6tables (github.com/coreos/go-iptables) and
// deletes the conntrack entries of a blocked address over netlink
// (github.com/ti-mo/conntrack), so flows that were already established stop
// too. DryRun only logs.
//
// Errors returned by IPTables are *Error values that say whether a retry can
// help: errors.Is(err, ErrTemporary) or errors.Is(err, ErrPermanent), or
// IsTemporary(err).
package firewall

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strings"
)

// Firewall is what the guard needs from a packet filter. Implementations are
// safe for concurrent use.
type Firewall interface {
	// Setup creates our chain (IPv4 and IPv6) if missing, flushes what a
	// previous run left in it (unless told to keep it) and inserts one jump
	// to it at the top of INPUT unless a jump is already there. Idempotent.
	Setup(ctx context.Context) error
	// Block drops all traffic from addr. It appends
	// `-s ADDR -m comment --comment COMMENT -j DROP` to our chain unless a
	// DROP rule for addr is already there, then deletes the conntrack
	// entries of addr so established flows stop as well.
	Block(ctx context.Context, addr netip.Addr, comment string) error
	// Unblock deletes the DROP rules for addr. A rule or chain that does not
	// exist counts as success.
	Unblock(ctx context.Context, addr netip.Addr) error
	// Blocked lists the addresses that are dropped now: a DROP rule in our
	// chain, and the chain hooked into INPUT. It detects a flushed chain.
	Blocked(ctx context.Context) ([]netip.Addr, error)
	// Rules lists the addresses with a DROP rule in our chain, whether or
	// not INPUT jumps to it, and changes nothing: what a firewall of ours
	// put there before (a missing chain has none).
	Rules(ctx context.Context) ([]netip.Addr, error)
	// Real reports whether Block really drops traffic: false for a dry
	// run that only logs.
	Real() bool
	// Teardown removes the jump from INPUT, then flushes and deletes our
	// chain (both families). Missing pieces count as success.
	Teardown(ctx context.Context) error
}

// DefaultChain is the chain name used when Options.Chain is empty.
const DefaultChain = "ASTGUARD"

// MaxCommentLen is the longest comment put on a rule (iptables allows 255).
const MaxCommentLen = 200

var chainRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,28}$`)

// Sentinel errors. They are wrapped by *Error; test with errors.Is.
var (
	// ErrTemporary matches errors where a retry can help (xtables lock
	// timeout, EAGAIN, conntrack not reachable right now).
	ErrTemporary = errors.New("temporary firewall error")
	// ErrPermanent matches errors a retry cannot fix (missing binary,
	// invalid address, permission denied, bad chain name).
	ErrPermanent = errors.New("permanent firewall error")

	// ErrNotInstalled: the iptables binary is missing.
	ErrNotInstalled = errors.New("iptables not found: install the iptables package")
	// ErrInvalidAddr: the address cannot be put in a rule.
	ErrInvalidAddr = errors.New("invalid address")
	// ErrInvalidChain: the chain name does not match ^[A-Za-z0-9_-]{1,28}$.
	ErrInvalidChain = errors.New("invalid chain name")
	// ErrFamilyUnavailable: an IPv6 address while ip6tables is not managed.
	ErrFamilyUnavailable = errors.New("address family not managed")
	// ErrConntrack: Block put the DROP rule in place but could not delete
	// the conntrack entries of the address, so flows that were already
	// established may go on until they time out. The block itself holds;
	// callers should log this and may retry Block (it is idempotent and
	// deletes the entries again).
	ErrConntrack = errors.New("drop rule in place but conntrack entries not deleted")
)

// Error is the error type returned by IPTables. It names the operation, the
// address and the step that failed, and says whether a retry can help.
type Error struct {
	Op        string     // "init", "setup", "block", "unblock", "blocked", "rules", "teardown"
	Addr      netip.Addr // zero when the operation is not about one address
	Step      string     // what failed, e.g. "append DROP rule to ASTGUARD (iptables)"
	Err       error
	temporary bool
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("firewall ")
	b.WriteString(e.Op)
	if e.Addr.IsValid() {
		b.WriteString(" ")
		b.WriteString(e.Addr.String())
	}
	if e.Step != "" {
		b.WriteString(": ")
		b.WriteString(e.Step)
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// Temporary reports whether retrying the operation can help.
func (e *Error) Temporary() bool { return e.temporary }

// Is makes errors.Is(err, ErrTemporary) and errors.Is(err, ErrPermanent)
// work.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrTemporary:
		return e.temporary
	case ErrPermanent:
		return !e.temporary
	}
	return false
}

// IsTemporary reports whether err says a retry can help. Errors that do not
// carry the information (and nil) report false.
func IsTemporary(err error) bool {
	var t interface{ Temporary() bool }
	if errors.As(err, &t) {
		return t.Temporary()
	}
	return false
}

// NormalizeAddr returns addr as it goes into a rule: IPv4-mapped IPv6
// addresses become IPv4. Invalid, zoned, unspecified, multicast, broadcast
// and link-local addresses are refused with an error wrapping ErrInvalidAddr.
func NormalizeAddr(addr netip.Addr) (netip.Addr, error) {
	switch {
	case !addr.IsValid():
		return netip.Addr{}, fmt.Errorf("%w: zero address", ErrInvalidAddr)
	case addr.Zone() != "":
		return netip.Addr{}, fmt.Errorf("%w: %s has a zone", ErrInvalidAddr, addr)
	}
	addr = addr.Unmap()
	switch {
	case addr.IsUnspecified():
		return netip.Addr{}, fmt.Errorf("%w: %s is unspecified", ErrInvalidAddr, addr)
	case addr.IsMulticast():
		return netip.Addr{}, fmt.Errorf("%w: %s is multicast", ErrInvalidAddr, addr)
	case addr == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return netip.Addr{}, fmt.Errorf("%w: %s is the broadcast address", ErrInvalidAddr, addr)
	case addr.IsLinkLocalUnicast():
		// A link-local address means something only with its interface,
		// and a rule without one would cut that address (often the
		// router) off every link.
		return netip.Addr{}, fmt.Errorf("%w: %s is link-local", ErrInvalidAddr, addr)
	}
	return addr, nil
}

// SanitizeComment makes s safe for a rule comment: printable ASCII without
// quotes, backquotes or backslashes (others become '_'), surrounding spaces
// trimmed, at most MaxCommentLen bytes. An empty result becomes "astguard".
func SanitizeComment(s string) string {
	b := make([]byte, 0, min(len(s), MaxCommentLen))
	for _, r := range s {
		if len(b) >= MaxCommentLen {
			break
		}
		switch {
		case r == '"' || r == '\'' || r == '`' || r == '\\':
			b = append(b, '_')
		case r >= 0x20 && r <= 0x7e:
			b = append(b, byte(r))
		default:
			b = append(b, '_')
		}
	}
	out := strings.TrimSpace(string(b))
	if out == "" {
		return "astguard"
	}
	return out
}

// ValidChain reports whether name can be used as our chain.
func ValidChain(name string) error {
	if !chainRE.MatchString(name) {
		return fmt.Errorf("%w %q: must match %s", ErrInvalidChain, name, chainRE)
	}
	return nil
}
