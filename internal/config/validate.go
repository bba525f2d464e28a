package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"unicode"
)

// problems collects validation errors in the order they are found.
type problems []error

func (p *problems) add(format string, args ...any) {
	*p = append(*p, fmt.Errorf(format, args...))
}

// positive checks a duration that must be > 0.
func (p *problems) positive(key string, d Duration) {
	if d <= 0 {
		p.add("%s must be > 0", key)
	}
}

// levels checks a warning/critical pair: neither negative, and warning
// below critical when both are enabled (> 0).
func (p *problems) levels(warnKey string, warn int, critKey string, crit int) {
	if warn < 0 {
		p.add("%s must be >= 0", warnKey)
	}
	if crit < 0 {
		p.add("%s must be >= 0", critKey)
	}
	if warn > 0 && crit > 0 && warn >= crit {
		p.add("%s (%d) must be below %s (%d)", warnKey, warn, critKey, crit)
	}
}

// threshold checks a window and its levels.
func (p *problems) threshold(key string, t Threshold) {
	p.positive(key+".window", t.Window)
	p.levels(key+".warning", t.Warning, key+".critical", t.Critical)
}

// Validate checks every value and returns all problems joined (one per
// line, each starting with its key), or nil.
func (c *Config) Validate() error {
	var p problems

	// [ami]
	if !validAddress(c.AMI.Address) {
		p.add("ami.address: %q must be host:port", c.AMI.Address)
	} else if _, port, _ := net.SplitHostPort(c.AMI.Address); !validPort(port) {
		p.add("ami.address: %q: the port must be a number from 1 to 65535", c.AMI.Address)
	}
	switch {
	case c.AMI.Username == "":
		p.add("ami.username must not be empty")
	case strings.ContainsFunc(c.AMI.Username, unicode.IsControl):
		p.add("ami.username must not contain control characters")
	}
	if strings.ContainsAny(string(c.AMI.Secret), "\r\n") {
		p.add("ami.secret must not contain CR or LF")
	}

	// [log]
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		p.add("log.level: %q is not one of debug, info, warn, error", c.Log.Level)
	}

	// [detector]
	d := &c.Detection
	p.positive("detector.cooldown", d.Cooldown)
	if d.MaxExtensions < 1 {
		p.add("detector.max_extensions must be >= 1")
	}
	if d.MaxAddresses < 1 {
		p.add("detector.max_addresses must be >= 1")
	}
	p.positive("detector.idle_expiry", d.IdleExpiry)

	cr := d.CallRate
	p.positive("detector.call_rate.burst_window", cr.BurstWindow)
	p.levels("detector.call_rate.burst_warning", cr.BurstWarning, "detector.call_rate.burst_critical", cr.BurstCritical)
	p.positive("detector.call_rate.window", cr.Window)
	p.levels("detector.call_rate.warning", cr.Warning, "detector.call_rate.critical", cr.Critical)

	p.levels("detector.concurrent.warning", d.Concurrent.Warning, "detector.concurrent.critical", d.Concurrent.Critical)

	pg := d.PrefixGuess
	if pg.Digits < 4 || pg.Digits > 15 {
		p.add("detector.prefix_guess.digits must be between 4 and 15")
	}
	p.positive("detector.prefix_guess.window", pg.Window)
	p.levels("detector.prefix_guess.warning", pg.Warning, "detector.prefix_guess.critical", pg.Critical)

	in := d.International
	for _, s := range in.AccessCodes {
		if s == "" || !isDigits(strings.TrimPrefix(s, "+")) {
			p.add("detector.international.access_codes: %q is not a dialling code (digits, optionally after a leading +)", s)
		}
	}
	if len(in.AccessCodes) == 0 && in.Warning+in.Critical+in.HighRiskWarning+in.HighRiskCritical > 0 {
		p.add("detector.international.access_codes must not be empty while the international levels are not all 0")
	}
	if !isDigits(in.OutsideLine) {
		p.add("detector.international.outside_line: %q is not an outside-line prefix (digits only)", in.OutsideLine)
	}
	p.positive("detector.international.window", in.Window)
	p.levels("detector.international.warning", in.Warning, "detector.international.critical", in.Critical)
	for _, s := range in.HighRiskCountries {
		if s == "" || len(s) > 6 || !isDigits(s) {
			p.add("detector.international.high_risk_countries: %q is not a country code (1 to 6 digits)", s)
		}
	}
	p.levels("detector.international.high_risk_warning", in.HighRiskWarning,
		"detector.international.high_risk_critical", in.HighRiskCritical)

	p.threshold("detector.failed_probes", d.FailedProbes)
	p.threshold("detector.auth_failures", d.AuthFailures)

	// A key idle for idle_expiry loses its counts, so a shorter idle_expiry
	// than a window would let a slow attack stay below the levels.
	if d.IdleExpiry > 0 {
		if key, w := d.longestWindow(); w > d.IdleExpiry {
			p.add("detector.idle_expiry (%s) must not be shorter than %s (%s)", d.IdleExpiry, key, w)
		}
	}

	// [allow]
	for _, s := range c.Allow.Extensions {
		if !validExtension(s) {
			p.add("allow.extensions: %q is not an extension name", s)
		}
	}
	for _, s := range c.Allow.Networks {
		if _, ok := parseNetwork(s); !ok {
			p.add("allow.networks: %q is not an IP address or CIDR network", s)
		}
	}
	for _, s := range c.Allow.Destinations {
		if !isDigits(strings.TrimPrefix(s, "+")) || strings.TrimPrefix(s, "+") == "" {
			p.add("allow.destinations: %q is not a dialled prefix (digits, optionally after a leading +)", s)
		}
	}

	return errors.Join(p...)
}

// longestWindow returns the longest window of a rule that has a level
// enabled, and its key.
func (d *Detection) longestWindow() (string, Duration) {
	on := func(levels ...int) bool {
		for _, l := range levels {
			if l > 0 {
				return true
			}
		}
		return false
	}
	var key string
	var longest Duration
	for _, w := range []struct {
		key    string
		window Duration
		on     bool
	}{
		{"detector.call_rate.burst_window", d.CallRate.BurstWindow, on(d.CallRate.BurstWarning, d.CallRate.BurstCritical)},
		{"detector.call_rate.window", d.CallRate.Window, on(d.CallRate.Warning, d.CallRate.Critical)},
		{"detector.prefix_guess.window", d.PrefixGuess.Window, on(d.PrefixGuess.Warning, d.PrefixGuess.Critical)},
		{"detector.international.window", d.International.Window, on(d.International.Warning, d.International.Critical,
			d.International.HighRiskWarning, d.International.HighRiskCritical)},
		{"detector.failed_probes.window", d.FailedProbes.Window, on(d.FailedProbes.Warning, d.FailedProbes.Critical)},
		{"detector.auth_failures.window", d.AuthFailures.Window, on(d.AuthFailures.Warning, d.AuthFailures.Critical)},
	} {
		if w.on && w.window > longest {
			key, longest = w.key, w.window
		}
	}
	return key, longest
}

// isDigits reports whether s holds only ASCII digits (true for "").
func isDigits(s string) bool {
	for i := range len(s) {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// validAddress reports whether s is host:port with a host free of spaces
// and control characters.
func validAddress(s string) bool {
	host, port, err := net.SplitHostPort(s)
	return err == nil && host != "" && port != "" &&
		!strings.ContainsFunc(host, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) })
}

func validPort(s string) bool {
	n, err := strconv.Atoi(s)
	return err == nil && n >= 1 && n <= 65535
}

// validExtension accepts "name" or "TECH/name": printable ASCII without
// spaces, at most one slash and nothing empty on either side of it.
func validExtension(s string) bool {
	for i := range len(s) {
		if s[i] <= ' ' || s[i] > '~' {
			return false
		}
	}
	tech, name, found := strings.Cut(s, "/")
	if !found {
		return s != ""
	}
	return tech != "" && name != "" && !strings.Contains(name, "/")
}

// parseNetwork parses a CIDR network or a bare address (which becomes a
// single-address prefix). Host bits are cleared ("10.1.2.3/8" is
// 10.0.0.0/8), IPv4-mapped IPv6 is unmapped, and zones are refused.
func parseNetwork(s string) (netip.Prefix, bool) {
	if p, err := netip.ParsePrefix(s); err == nil {
		if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
		}
		return p.Masked(), true
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Prefix{}, false
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), true
}
