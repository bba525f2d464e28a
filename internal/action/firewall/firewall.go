// Package firewall is the guard's packet filter: it drops all traffic from
// an address or a prefix in a chain of our own, hooked into INPUT by one
// jump.
//
// Firewall is the narrow interface the rest of the guard uses. There are
// two real ones, both on iptables/ip6tables (github.com/coreos/go-iptables,
// either backend):
//
//   - IPSet keeps the banned addresses and prefixes in kernel address sets
//     (ipset hash:ip and hash:net, changed over netlink with
//     github.com/vishvananda/netlink) matched by one rule each in our
//     chain: a packet costs one hash lookup however many bans there are,
//     and a ban costs one netlink message. Entries carry the kernel's
//     timeout.
//   - IPTables puts one DROP rule per ban in our chain (a batch goes in with
//     one iptables-restore): the kernel walks the rules one by one for
//     every packet, so it is the fallback where the kernel has no ipset.
//
// New picks one (Options.Match). Both delete the conntrack entries of what
// they block over netlink (github.com/ti-mo/conntrack), so flows that were
// already established stop too. DryRun only logs; Lazy builds one on first
// use.
//
// Errors returned by IPSet and IPTables are *Error values that say whether
// a retry can help: errors.Is(err, ErrTemporary) or errors.Is(err,
// ErrPermanent), or IsTemporary(err).
package firewall

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"time"
)

// Entry is one thing a firewall drops: all traffic from Prefix, a single
// address (a /32 or a /128) or a network.
type Entry struct {
	Prefix netip.Prefix
	// Timeout is how long the kernel keeps the entry on its own; 0: until
	// it is removed. IPSet gives its set entries this timeout (at most
	// MaxSetTimeout: a longer one is cut to it and must be renewed);
	// IPTables and DryRun keep every entry until it is removed, and report
	// 0.
	Timeout time.Duration
	// Comment says why (the rule's comment in IPTables; IPSet keeps no
	// comment: the bans state says why).
	Comment string
}

// MaxSetTimeout is the longest timeout the kernel gives an ipset entry
// (IPSET_MAX_TIMEOUT, 2147483 s: about 24.8 days). An entry meant to last
// longer must be added again before it runs out.
const MaxSetTimeout = 2147483 * time.Second

// Firewall is what the guard needs from a packet filter. Implementations are
// safe for concurrent use.
type Firewall interface {
	// Setup creates what the firewall needs if missing (our chain in IPv4
	// and IPv6, the sets, the rules matching them), flushes what a
	// previous run left (unless told to keep it) and inserts one jump to
	// the chain at the top of INPUT unless a jump is already there.
	// Idempotent.
	Setup(ctx context.Context) error
	// Block drops all traffic from each entry's prefix, unless it is
	// dropped already (then a set entry's timeout is renewed), and has the
	// conntrack entries of those prefixes deleted right after, in the
	// background, so established flows stop as well. A batch is applied
	// at once: all or none, or, for sets, entry by entry with the first
	// failure returned.
	Block(ctx context.Context, entries ...Entry) error
	// Unblock stops dropping each prefix (exactly that prefix: an address
	// inside a blocked network stays blocked). A prefix, set or chain that
	// is not there counts as success.
	Unblock(ctx context.Context, prefixes ...netip.Prefix) error
	// Blocked lists what is dropped now, sorted by prefix, each with the
	// timeout the kernel has left (0: none): entries in our chain or sets
	// that the chain matches, with the chain hooked into INPUT. It detects
	// a flushed chain or set. Comments are not returned.
	Blocked(ctx context.Context) ([]Entry, error)
	// Rules lists the prefixes our chain or our sets hold, whether or not
	// INPUT jumps to the chain, and changes nothing: what a firewall of
	// ours put there before (a missing chain or set has none).
	Rules(ctx context.Context) ([]netip.Prefix, error)
	// Real reports whether Block really drops traffic: false for a dry
	// run that only logs.
	Real() bool
	// Teardown removes the jump from INPUT, then flushes and deletes our
	// chain (both families) and our sets. Missing pieces count as success.
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
	// ErrInvalidAddr: the address or prefix cannot be put in a rule.
	ErrInvalidAddr = errors.New("invalid address")
	// ErrInvalidChain: the chain name does not match ^[A-Za-z0-9_-]{1,28}$.
	ErrInvalidChain = errors.New("invalid chain name")
	// ErrFamilyUnavailable: an IPv6 address while ip6tables is not managed.
	ErrFamilyUnavailable = errors.New("address family not managed")
	// ErrSetsUnavailable: the kernel (or this network namespace) has no
	// ipset; New falls back to IPTables with MatchAuto.
	ErrSetsUnavailable = errors.New("kernel address sets (ipset) unavailable")
	// ErrConntrack: the DROP rule or set entry is in place but the
	// conntrack entries of the address could not be deleted, so flows that
	// were already established may go on until they time out. The block
	// itself holds. Logged (with the cause) by the firewall, which deletes
	// them in the background.
	ErrConntrack = errors.New("drop rule in place but conntrack entries not deleted")
)

// Error is the error type returned by IPSet and IPTables. It names the
// operation, the prefix and the step that failed, and says whether a retry
// can help.
type Error struct {
	Op        string       // "init", "setup", "block", "unblock", "blocked", "rules", "teardown"
	Prefix    netip.Prefix // zero when the operation is not about one address or network
	Step      string       // what failed, e.g. "append DROP rule to ASTGUARD (iptables)"
	Err       error
	temporary bool
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("firewall ")
	b.WriteString(e.Op)
	if e.Prefix.IsValid() {
		b.WriteString(" ")
		b.WriteString(PrefixString(e.Prefix))
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

// Single returns the prefix of the single address a: a /32 or a /128.
func Single(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, a.BitLen()) }

// PrefixString is p as a person writes it: the bare address for a single
// address, else the prefix (203.0.113.7, 2001:db8:1:2::/64).
func PrefixString(p netip.Prefix) string {
	if p.IsSingleIP() {
		return p.Addr().String()
	}
	return p.String()
}

// The widest prefix a firewall takes: a ban of more is a mistake (or an
// attack on the guard itself), never a decision.
const (
	WidestIPv4 = 8
	WidestIPv6 = 16
)

// NormalizePrefix returns p as it goes into a rule or set: IPv4-mapped
// prefixes become IPv4, host bits are cleared, and a single address is
// checked as NormalizeAddr does. A network wider than WidestIPv4 or
// WidestIPv6, or one of link-local or multicast addresses, is refused with
// an error wrapping ErrInvalidAddr.
func NormalizePrefix(p netip.Prefix) (netip.Prefix, error) {
	if !p.IsValid() {
		return netip.Prefix{}, fmt.Errorf("%w: invalid prefix", ErrInvalidAddr)
	}
	a, bits := p.Addr(), p.Bits()
	if a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("%w: %s has a zone", ErrInvalidAddr, a)
	}
	if a.Is4In6() && bits >= 96 {
		a, bits = a.Unmap(), bits-96
	}
	if bits == a.BitLen() {
		n, err := NormalizeAddr(a)
		if err != nil {
			return netip.Prefix{}, err
		}
		return Single(n), nil
	}
	q := netip.PrefixFrom(a, bits).Masked()
	widest := WidestIPv4
	if q.Addr().Is6() {
		widest = WidestIPv6
	}
	switch {
	case bits < widest:
		return netip.Prefix{}, fmt.Errorf("%w: %s is wider than /%d", ErrInvalidAddr, q, widest)
	case q.Addr().IsMulticast():
		return netip.Prefix{}, fmt.Errorf("%w: %s is multicast", ErrInvalidAddr, q)
	case q.Addr().IsLinkLocalUnicast():
		return netip.Prefix{}, fmt.Errorf("%w: %s is link-local", ErrInvalidAddr, q)
	case q.Addr().Is4In6():
		return netip.Prefix{}, fmt.Errorf("%w: %s mixes IPv4-mapped and IPv6 addresses", ErrInvalidAddr, q)
	}
	return q, nil
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
