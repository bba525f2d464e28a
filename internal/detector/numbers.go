package detector

import (
	"slices"
	"strings"
)

// IsDialled reports whether s looks like a dialled number: an optional
// leading '+' and then only digits, '*' or '#'. Dialplan names such as "s" or
// "h", SIP URIs and empty strings are not numbers.
func IsDialled(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	if s[0] == '+' {
		s = s[1:]
		if s == "" {
			return false
		}
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && c != '*' && c != '#' {
			return false
		}
	}
	return true
}

// plan is the dialling plan the number rules need.
type plan struct {
	access    []string // international access codes, longest first
	outside   string
	highRisk  []string // country codes, longest first
	digits    int
	allowDest []string
}

func newPlan(cfg *Config) plan {
	p := plan{
		access:    sortedLongestFirst(cfg.AccessCodes),
		outside:   cfg.OutsideLine,
		highRisk:  sortedLongestFirst(cfg.HighRiskCountries),
		digits:    cfg.PrefixDigits,
		allowDest: slices.Clone(cfg.AllowDestinations),
	}
	return p
}

func sortedLongestFirst(in []string) []string {
	out := slices.Clone(in)
	slices.SortStableFunc(out, func(a, b string) int { return len(b) - len(a) })
	return out
}

// allowed reports whether the number starts with an allow-listed prefix.
func (p *plan) allowed(num string) bool {
	for _, a := range p.allowDest {
		if strings.HasPrefix(num, a) {
			return true
		}
	}
	return false
}

// International classifies a dialled number: whether it goes abroad (an
// access code after the optional outside-line prefix) and whether its
// country code is on the high-risk list. rest is the number after the access
// code (country code first).
func (p *plan) international(num string) (intl, risky bool, rest string) {
	n := num
	if p.outside != "" && len(n) > len(p.outside) && strings.HasPrefix(n, p.outside) {
		n = n[len(p.outside):]
	}
	for _, ac := range p.access {
		if len(n) > len(ac) && strings.HasPrefix(n, ac) {
			rest = n[len(ac):]
			intl = true
			break
		}
	}
	if !intl {
		return false, false, ""
	}
	for _, cc := range p.highRisk {
		if strings.HasPrefix(rest, cc) {
			return true, true, rest
		}
	}
	return true, false, rest
}

// split cuts a number into the prefix dialled in front of the destination
// and the destination itself (its last digits). ok is false for numbers
// shorter than the destination length (internal extensions, short codes).
func (p *plan) split(num string) (prefix, dest string, ok bool) {
	num = strings.TrimRight(num, "#") // many phones end a number with # ("dial now")
	if p.digits <= 0 || len(num) < p.digits {
		return "", "", false
	}
	cut := len(num) - p.digits
	dest = num[cut:]
	for i := 0; i < len(dest); i++ {
		if dest[i] < '0' || dest[i] > '9' {
			return "", "", false
		}
	}
	return num[:cut], dest, true
}
