package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
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

	switch c.Mode {
	case ModeObserve, ModeEnforce:
	default:
		p.add("mode: %q is not one of %s, %s", c.Mode, ModeObserve, ModeEnforce)
	}

	// [ami]
	hostport, useTLS := c.AMI.Endpoint()
	if !validAddress(hostport) {
		p.add("ami.address: %q must be host:port or tls://host:port", c.AMI.Address)
	} else if _, port, _ := net.SplitHostPort(hostport); !validPort(port) {
		p.add("ami.address: %q: the port must be a number from 1 to 65535", c.AMI.Address)
	}
	switch c.AMI.Auth {
	case AuthMD5, AuthPlain:
	default:
		p.add("ami.auth: %q is not one of %s, %s", c.AMI.Auth, AuthMD5, AuthPlain)
	}
	if !useTLS && c.AMI.TLSCA != "" {
		p.add("ami.tls_ca is set but ami.address does not start with tls://")
	}
	if !useTLS && c.AMI.TLSServerName != "" {
		p.add("ami.tls_server_name is set but ami.address does not start with tls://")
	}
	if strings.ContainsFunc(c.AMI.TLSServerName, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) {
		p.add("ami.tls_server_name must not contain spaces or control characters")
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
	p.positive("ami.reconnect_interval", c.AMI.ReconnectInterval)
	p.positive("ami.reconnect_max", c.AMI.ReconnectMax)
	p.positive("ami.action_timeout", c.AMI.ActionTimeout)
	p.positive("ami.keepalive", c.AMI.Keepalive)
	if c.AMI.QueueSize < minQueueSize || c.AMI.QueueSize > maxQueueSize {
		p.add("ami.queue_size must be between %d and %d", minQueueSize, maxQueueSize)
	}

	// [log]
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		p.add("log.level: %q is not one of debug, info, warn, error", c.Log.Level)
	}

	// [metrics]
	if l := c.Metrics.Listen; l != "" {
		if !validAddress(l) {
			p.add("metrics.listen: %q must be host:port", l)
		} else if _, port, _ := net.SplitHostPort(l); !validPort(port) {
			p.add("metrics.listen: %q: the port must be a number from 1 to 65535", l)
		}
	}
	p.positive("metrics.silence_alarm", c.Metrics.SilenceAlarm)

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
	p.networks("allow.networks", "counted or blocked", c.Allow.Networks, &c.Allow)
	for _, s := range c.Allow.Destinations {
		if !isDigits(strings.TrimPrefix(s, "+")) || strings.TrimPrefix(s, "+") == "" {
			p.add("allow.destinations: %q is not a dialled prefix (digits, optionally after a leading +)", s)
		}
	}

	c.Allow.validateWide(&p, c.Response.NeverBlock)

	c.Response.validate(&p, &c.Allow)
	// The detector raises one alert per rule, key and severity per
	// cooldown: an attack that trips one rule alerts only that often, and
	// a shorter incident_quiet would close its incident between two of its
	// alerts, so that the next one opened a new incident and ran every
	// action (a new secret) again.
	if q, cd := c.Response.IncidentQuiet, c.Detection.Cooldown; q > 0 && q < cd {
		p.add("response.incident_quiet (%s) must not be shorter than detector.cooldown (%s)", q, cd)
	}
	c.Secrets.validate(&p)
	c.Policy.validate(&p)
	c.Notify.validate(&p)
	c.CrowdSec.validate(&p)

	return errors.Join(p...)
}

// Bounds of ami.queue_size.
const (
	minQueueSize = 1 << 10
	maxQueueSize = 1 << 24
)

// maxChain is the longest iptables chain name (XT_EXTENSION_MAXNAMELEN
// less its NUL).
const maxChain = 28

// reservedChains are the built-in chains and verdicts, which iptables does
// not let a user chain be named after (and which the guard, flushing its
// own chain, must never take for its own).
var reservedChains = []string{"INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING", "ACCEPT", "DROP", "QUEUE", "RETURN"}

// minIPv6Prefix is the shortest response.ipv6_prefix: a /32 is a whole
// provider's block already.
const minIPv6Prefix = 32

// maxSocketPath is the longest path of a Unix socket on Linux: sun_path
// holds 108 bytes including the terminating NUL.
const maxSocketPath = 107

// validate checks the [response] table; allow holds the limits of
// never_block.
func (r *Response) validate(p *problems, allow *Allow) {
	p.positive("response.ban_duration", r.BanDuration)
	p.positive("response.incident_quiet", r.IncidentQuiet)
	switch r.Firewall {
	case FirewallIPTables, FirewallDryRun:
	default:
		p.add("response.firewall: %q is not one of %s, %s", r.Firewall, FirewallIPTables, FirewallDryRun)
	}
	switch r.FirewallMatch {
	case MatchAuto, MatchIPSet, MatchRules:
	default:
		p.add("response.firewall_match: %q is not one of %s, %s, %s", r.FirewallMatch, MatchAuto, MatchIPSet, MatchRules)
	}
	if r.IPv6Prefix < minIPv6Prefix || r.IPv6Prefix > 128 {
		p.add("response.ipv6_prefix must be between %d and 128", minIPv6Prefix)
	}
	switch {
	case !validChain(r.Chain):
		p.add("response.chain: %q must be 1 to %d letters, digits, _ or -", r.Chain, maxChain)
	case r.Chain[0] == '-':
		p.add("response.chain: %q must not start with -", r.Chain)
	case slices.Contains(reservedChains, r.Chain):
		p.add("response.chain: %q is a built-in chain or verdict of iptables", r.Chain)
	}

	paths := []struct{ key, path string }{
		{"response.state_file", r.StateFile},
		{"response.secrets_file", r.SecretsFile},
		{"response.admin_socket", r.AdminSocket},
	}
	for i, f := range paths {
		switch {
		case f.path == "":
			p.add("%s must not be empty", f.key)
			continue
		case !filepath.IsAbs(f.path):
			p.add("%s: %q must be an absolute path", f.key, f.path)
			continue
		}
		for _, g := range paths[:i] {
			if g.path != "" && filepath.Clean(g.path) == filepath.Clean(f.path) {
				p.add("%s: %q is the same file as %s", f.key, f.path, g.key)
			}
		}
	}
	if filepath.IsAbs(r.AdminSocket) && len(r.AdminSocket) > maxSocketPath {
		p.add("response.admin_socket is longer than %d bytes, the limit of a Unix socket path", maxSocketPath)
	}

	p.networks("response.never_block", "blocked", r.NeverBlock, allow)
	if r.ProtectPreviousSources < 0 {
		p.add("response.protect_previous_sources must be >= 0")
	}
	if r.HangupCause < 0 || r.HangupCause > 127 {
		p.add("response.hangup_cause must be between 0 and 127")
	}
	if r.RetryMax < 1 || r.RetryMax > 100 {
		p.add("response.retry_max must be between 1 and 100")
	}
	p.positive("response.retry_backoff", r.RetryBackoff)
}

// validate checks the [policy] tables: every action known, none twice.
func (pol *Policy) validate(p *problems) {
	for _, name := range policyRules {
		r := pol.rule(name)
		for _, l := range []struct {
			severity string
			actions  []string
		}{{"warning", r.Warning}, {"critical", r.Critical}} {
			key := "policy." + name + "." + l.severity
			seen := make(map[string]int, len(l.actions))
			for _, a := range l.actions {
				seen[a]++
				switch {
				case seen[a] == 2: // reported once, however often repeated
					p.add("%s: %q is listed twice", key, a)
				case seen[a] > 2:
				case !slices.Contains(actions, a):
					p.add("%s: %q is not one of %s", key, a, strings.Join(actions, ", "))
				}
			}
		}
	}
}

// validChain reports whether s is 1 to maxChain ASCII letters, digits, _
// or -.
func validChain(s string) bool {
	if s == "" || len(s) > maxChain {
		return false
	}
	for i := range len(s) {
		switch b := s[i]; {
		case b >= 'a' && b <= 'z', b >= 'A' && b <= 'Z', b >= '0' && b <= '9', b == '_', b == '-':
		default:
			return false
		}
	}
	return true
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

// networks checks the entries of a list of networks never counted or never
// blocked (key: allow.networks or response.never_block; spared says what
// its addresses are spared): each an address or a CIDR network without host
// bits, and no wider than allow's limits unless allow.confirm_wide lists
// it. A wrong entry is the most dangerous typo of the file: it silently
// exempts a whole range from the guard.
func (p *problems) networks(key, spared string, list []string, allow *Allow) {
	for i, s := range list {
		if !p.network(key, i, s) {
			continue
		}
		n, _ := parseNetwork(s)
		limit, limitKey, ok := allow.widest(n)
		if !ok || n.Bits() >= limit || allow.confirmed(n) {
			continue
		}
		p.add("%s[%d]: %q is wider than /%d (%s), so no address in it would ever be %s; if you mean it, add %q to confirm_wide in [allow]",
			key, i, s, limit, limitKey, spared, s)
	}
}

// network checks one entry of a list of networks (key[i]) and reports
// whether it is a valid one.
func (p *problems) network(key string, i int, s string) bool {
	if _, ok := parseNetwork(s); !ok {
		p.add("%s[%d]: %q is not an IP address or CIDR network", key, i, s)
		return false
	}
	if pr, err := netip.ParsePrefix(s); err == nil && pr != pr.Masked() {
		a := pr.Addr()
		p.add("%s[%d]: %q has host bits set: write %s for the network or %s for the address",
			key, i, s, pr.Masked(), netip.PrefixFrom(a, a.BitLen()))
		return false
	}
	return true
}

// widest returns the limit of n's family, the key that sets it, and
// whether the limit is valid (an invalid one is reported on its own).
func (a *Allow) widest(n netip.Prefix) (int, string, bool) {
	if n.Addr().Is4() {
		return a.WidestIPv4, "allow.widest_ipv4", a.WidestIPv4 >= 0 && a.WidestIPv4 <= 32
	}
	return a.WidestIPv6, "allow.widest_ipv6", a.WidestIPv6 >= 0 && a.WidestIPv6 <= 128
}

// confirmed reports whether confirm_wide lists the network n.
func (a *Allow) confirmed(n netip.Prefix) bool {
	for _, s := range a.ConfirmWide {
		if c, ok := parseNetwork(s); ok && c == n {
			return true
		}
	}
	return false
}

// validateWide checks allow's limits and confirm_wide, whose entries must
// each be a network of allow.networks or neverBlock (response.never_block):
// one that confirms nothing is a stale or mistyped confirmation.
func (a *Allow) validateWide(p *problems, neverBlock []string) {
	if a.WidestIPv4 < 0 || a.WidestIPv4 > 32 {
		p.add("allow.widest_ipv4 must be between 0 and 32")
	}
	if a.WidestIPv6 < 0 || a.WidestIPv6 > 128 {
		p.add("allow.widest_ipv6 must be between 0 and 128")
	}
	listed := func(n netip.Prefix) bool {
		for _, s := range slices.Concat(a.Networks, neverBlock) {
			if e, ok := parseNetwork(s); ok && e == n {
				return true
			}
		}
		return false
	}
	for i, s := range a.ConfirmWide {
		if !p.network("allow.confirm_wide", i, s) {
			continue
		}
		if n, _ := parseNetwork(s); !listed(n) {
			p.add("allow.confirm_wide[%d]: %q confirms nothing: it is not a network of allow.networks or response.never_block", i, s)
		}
	}
}
