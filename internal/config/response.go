package config

import (
	"net/netip"
	"slices"
)

// policyRules are the [policy] sub-table names in file order; they are the
// detector's rule names (detector.Rule.String()).
var policyRules = []string{
	"call_rate", "concurrent", "prefix_guess", "international",
	"failed_probes", "auth_failures", "new_source",
}

// rule returns the RulePolicy of the named rule, or nil.
func (p *Policy) rule(name string) *RulePolicy {
	switch name {
	case "call_rate":
		return &p.CallRate
	case "concurrent":
		return &p.Concurrent
	case "prefix_guess":
		return &p.PrefixGuess
	case "international":
		return &p.International
	case "failed_probes":
		return &p.FailedProbes
	case "auth_failures":
		return &p.AuthFailures
	case "new_source":
		return &p.NewSource
	}
	return nil
}

// Actions returns a copy of the actions for an alert of the named rule
// (detector.Rule.String(): "call_rate", ...) and severity ("warning" or
// "critical"). An unknown rule or severity gives nil; a configured empty
// list gives an empty, non-nil slice.
func (p *Policy) Actions(rule, severity string) []string {
	r := p.rule(rule)
	if r == nil {
		return nil
	}
	switch severity {
	case "warning":
		return slices.Clone(r.Warning)
	case "critical":
		return slices.Clone(r.Critical)
	}
	return nil
}

// NeverBlock returns the addresses the responder must never block:
// response.never_block followed by allow.networks, parsed as for the
// detector's allow-list (a bare address is a single-address prefix, host
// bits are cleared, IPv4-mapped IPv6 is unmapped). Call it on a validated
// Config: an entry that does not parse is left out. The slice is new.
func (c *Config) NeverBlock() []netip.Prefix {
	out := make([]netip.Prefix, 0, len(c.Response.NeverBlock)+len(c.Allow.Networks))
	out = appendNetworks(out, c.Response.NeverBlock)
	return appendNetworks(out, c.Allow.Networks)
}

// appendNetworks appends the entries of list that parseNetwork accepts.
func appendNetworks(dst []netip.Prefix, list []string) []netip.Prefix {
	for _, s := range list {
		if p, ok := parseNetwork(s); ok {
			dst = append(dst, p)
		}
	}
	return dst
}
