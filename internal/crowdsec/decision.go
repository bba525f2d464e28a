package crowdsec

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/crowdsecurity/crowdsec/pkg/models"

	"github.com/astguard/astguard/internal/action/firewall"
)

// The scopes of a decision the guard applies.
const (
	ScopeIP    = "Ip"
	ScopeRange = "Range"
)

// decisionBan is the only type of decision the guard applies.
const decisionBan = "ban"

// Decision is a decision of the Local API, checked: what a ban needs.
type Decision struct {
	ID int64
	// Origin and Scenario are as the LAPI wrote them, made printable and
	// cut to a bounded length (clean).
	Origin, Scenario string
	// Prefix is what is banned: one address (scope Ip) or a range.
	Prefix netip.Prefix
	// Until is when the decision ends, from its remaining duration.
	Until time.Time
}

// Target is the banned address, or the range when it covers more.
func (d *Decision) Target() string {
	if d.Prefix.IsSingleIP() {
		return d.Prefix.Addr().String()
	}
	return d.Prefix.String()
}

// Reason is why a decision is refused or not applied.
type Reason string

// Why a decision is refused: it would ban what must never be banned, or
// is not what the API documents. A refused decision is counted and logged
// at warn.
const (
	// RefusedMalformed: a field missing, or a value that is no address,
	// range or duration, or an address no rule can hold.
	RefusedMalformed Reason = "malformed"
	// RefusedTooWide: a range wider than crowdsec.widest_ipv4 or
	// crowdsec.widest_ipv6 (0.0.0.0/0 and ::/0 among them).
	RefusedTooWide Reason = "too_wide"
	// RefusedProtected: it holds an address never blocked: the AMI
	// server, the guard's own address, the Local API, allow.networks or
	// response.never_block.
	RefusedProtected Reason = "protected"
	// RefusedOversized: a whole answer longer than the guard reads.
	RefusedOversized Reason = "oversized"
)

// Why a decision is ignored: it is valid but not for the guard (counted,
// logged at debug).
const (
	// IgnoredType: not a ban (captcha, throttle ...).
	IgnoredType Reason = "type"
	// IgnoredScope: neither Ip nor Range (Country, AS ...).
	IgnoredScope Reason = "scope"
	// IgnoredExpired: no time left.
	IgnoredExpired Reason = "expired"
)

// Limits are the checks a pulled decision must pass.
type Limits struct {
	// WidestIPv4 and WidestIPv6 are the shortest prefix lengths allowed.
	WidestIPv4, WidestIPv6 int
	// Protected are the networks never banned.
	Protected []netip.Prefix
}

// widest is the shortest prefix length allowed for p's family.
func widest(p netip.Prefix, lim *Limits) int {
	if p.Addr().Is4() {
		return lim.WidestIPv4
	}
	return lim.WidestIPv6
}

// maxText bounds the origin and scenario kept of a decision.
const maxText = 100

// check turns d, a new decision of the stream, into a Decision, or says
// why not: refused (a Refused* reason) or ignored (an Ignored* one). Every
// field is checked: the LAPI, or whoever answers in its place, is not
// trusted to send what the API documents.
func check(d *models.Decision, now time.Time, lim *Limits) (dec Decision, reason Reason, detail string) {
	if d == nil {
		return dec, RefusedMalformed, "null decision"
	}
	dec.ID = d.ID
	for _, f := range []struct {
		name string
		v    *string
	}{{"origin", d.Origin}, {"type", d.Type}, {"scope", d.Scope}, {"value", d.Value}, {"duration", d.Duration}, {"scenario", d.Scenario}} {
		if f.v == nil {
			return dec, RefusedMalformed, "no " + f.name
		}
	}
	dec.Origin, dec.Scenario = clean(*d.Origin, maxText), clean(*d.Scenario, maxText)
	if !strings.EqualFold(*d.Type, decisionBan) {
		return dec, IgnoredType, "type " + clean(*d.Type, 20)
	}
	if dec.Prefix, reason, detail = target(d); reason != "" {
		return dec, reason, detail
	}
	if w := widest(dec.Prefix, lim); dec.Prefix.Bits() < w {
		return dec, RefusedTooWide, fmt.Sprintf("%s is wider than /%d", dec.Prefix, w)
	}
	// A range's first address tells a range no rule can hold (multicast,
	// link-local, 0.0.0.0/8 ...).
	if _, err := firewall.NormalizeAddr(dec.Prefix.Addr()); err != nil {
		return dec, RefusedMalformed, clean(err.Error(), 100)
	}
	for _, n := range lim.Protected {
		if n.Overlaps(dec.Prefix) {
			return dec, RefusedProtected, fmt.Sprintf("%s holds %s, never blocked", dec.Target(), n)
		}
	}
	left, err := time.ParseDuration(strings.TrimSpace(*d.Duration))
	if err != nil {
		return dec, RefusedMalformed, fmt.Sprintf("duration %q is not a duration", clean(*d.Duration, 40))
	}
	if left <= 0 {
		return dec, IgnoredExpired, "no time left"
	}
	dec.Until = now.Add(left)
	return dec, "", ""
}

// target is what decision d is about: one address (scope Ip) or a range
// (scope Range, its host bits cleared), IPv4-mapped addresses unmapped;
// or why not (refused: malformed; ignored: another scope).
func target(d *models.Decision) (netip.Prefix, Reason, string) {
	if d.Scope == nil || d.Value == nil {
		return netip.Prefix{}, RefusedMalformed, "no scope or value"
	}
	value := strings.TrimSpace(*d.Value)
	switch {
	case strings.EqualFold(*d.Scope, ScopeIP):
		a, err := netip.ParseAddr(value)
		if err != nil || a.Zone() != "" {
			return netip.Prefix{}, RefusedMalformed, fmt.Sprintf("value %q is not an IP address", clean(value, 60))
		}
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), "", ""
	case strings.EqualFold(*d.Scope, ScopeRange):
		p, err := netip.ParsePrefix(value)
		if err != nil {
			// A range of one address may come without its /32.
			a, aerr := netip.ParseAddr(value)
			if aerr != nil || a.Zone() != "" {
				return netip.Prefix{}, RefusedMalformed, fmt.Sprintf("value %q is not a CIDR range", clean(value, 60))
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
		}
		return p.Masked(), "", ""
	}
	return netip.Prefix{}, IgnoredScope, "scope " + clean(*d.Scope, 20)
}

// clean makes s printable ASCII (anything else becomes '_') of at most n
// bytes: a string from the Local API goes into logs and ban reasons.
func clean(s string, n int) string {
	b := make([]byte, 0, min(len(s), n))
	for _, r := range s {
		if len(b) >= n {
			break
		}
		if r >= 0x20 && r <= 0x7e {
			b = append(b, byte(r))
		} else {
			b = append(b, '_')
		}
	}
	return string(b)
}
