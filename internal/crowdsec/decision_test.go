package crowdsec

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/crowdsecurity/crowdsec/pkg/models"
)

func TestCheck(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	lim := &Limits{WidestIPv4: 24, WidestIPv6: 48, Protected: []netip.Prefix{
		netip.MustParsePrefix("192.0.2.10/32"), netip.MustParsePrefix("2001:db8:1::/64"),
	}}
	dec := func(scope, value string) *models.Decision {
		return &models.Decision{ID: 7, Origin: ptr("cscli"), Scenario: ptr("ssh\x00bf\n"), Type: ptr("ban"), Scope: ptr(scope), Value: ptr(value), Duration: ptr("1h30m")}
	}
	for _, c := range []struct {
		name   string
		d      *models.Decision
		want   netip.Prefix
		reason Reason
	}{
		{"address", dec("Ip", "203.0.113.5"), netip.MustParsePrefix("203.0.113.5/32"), ""},
		{"scope in lower case", dec("ip", "203.0.113.5"), netip.MustParsePrefix("203.0.113.5/32"), ""},
		{"mapped address", dec("Ip", "::ffff:203.0.113.5"), netip.MustParsePrefix("203.0.113.5/32"), ""},
		{"IPv6 address", dec("Ip", "2001:db8:2::1"), netip.MustParsePrefix("2001:db8:2::1/128"), ""},
		{"range", dec("Range", "198.51.100.0/24"), netip.MustParsePrefix("198.51.100.0/24"), ""},
		{"range with host bits", dec("Range", "198.51.100.77/24"), netip.MustParsePrefix("198.51.100.0/24"), ""},
		{"mapped range", dec("Range", "::ffff:198.51.100.0/120"), netip.MustParsePrefix("198.51.100.0/24"), ""},
		{"range of one address without /32", dec("Range", "198.51.100.9"), netip.MustParsePrefix("198.51.100.9/32"), ""},
		{"IPv6 range at the limit", dec("Range", "2001:db8:2::/48"), netip.MustParsePrefix("2001:db8:2::/48"), ""},
		{"IPv4 range one bit too wide", dec("Range", "198.51.100.0/23"), netip.Prefix{}, RefusedTooWide},
		{"IPv6 range one bit too wide", dec("Range", "2001:db8:2::/47"), netip.Prefix{}, RefusedTooWide},
		{"all of IPv4", dec("Range", "0.0.0.0/0"), netip.Prefix{}, RefusedTooWide},
		{"all of IPv6", dec("Range", "::/0"), netip.Prefix{}, RefusedTooWide},
		{"protected address", dec("Ip", "192.0.2.10"), netip.Prefix{}, RefusedProtected},
		{"range holding a protected address", dec("Range", "192.0.2.0/24"), netip.Prefix{}, RefusedProtected},
		{"address in a protected network", dec("Ip", "2001:db8:1::99"), netip.Prefix{}, RefusedProtected},
		{"link-local", dec("Ip", "fe80::1"), netip.Prefix{}, RefusedMalformed},
		{"broadcast", dec("Ip", "255.255.255.255"), netip.Prefix{}, RefusedMalformed},
		{"not an address", dec("Ip", "203.0.113"), netip.Prefix{}, RefusedMalformed},
		{"not a range", dec("Range", "203.0.113.0/33"), netip.Prefix{}, RefusedMalformed},
		{"country", dec("Country", "FR"), netip.Prefix{}, IgnoredScope},
		{"null", nil, netip.Prefix{}, RefusedMalformed},
	} {
		t.Run(c.name, func(t *testing.T) {
			d, reason, detail := check(c.d, now, lim)
			if reason != c.reason {
				t.Fatalf("reason %q (%s), want %q", reason, detail, c.reason)
			}
			if reason != "" {
				return
			}
			if d.Prefix != c.want || !d.Until.Equal(now.Add(90*time.Minute)) || d.ID != 7 || d.Origin != "cscli" || d.Scenario != "ssh_bf_" {
				t.Errorf("decision %+v, want %s until %v, its text made printable", d, c.want, now.Add(90*time.Minute))
			}
		})
	}

	for _, c := range []struct {
		name   string
		edit   func(*models.Decision)
		reason Reason
	}{
		{"no origin", func(d *models.Decision) { d.Origin = nil }, RefusedMalformed},
		{"no duration", func(d *models.Decision) { d.Duration = nil }, RefusedMalformed},
		{"a duration that is none", func(d *models.Decision) { d.Duration = ptr("4 hours") }, RefusedMalformed},
		{"expired", func(d *models.Decision) { d.Duration = ptr("-1s") }, IgnoredExpired},
		{"captcha", func(d *models.Decision) { d.Type = ptr("captcha") }, IgnoredType},
		{"ban in capitals", func(d *models.Decision) { d.Type = ptr("BAN") }, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			d := dec("Ip", "203.0.113.5")
			c.edit(d)
			if _, reason, detail := check(d, now, lim); reason != c.reason {
				t.Errorf("reason %q (%s), want %q", reason, detail, c.reason)
			}
		})
	}
}

// The machine names a scenario for each detector rule at login.
func TestScenarios(t *testing.T) {
	got := Scenarios()
	want := []string{"astguard/call_rate", "astguard/concurrent", "astguard/prefix_guess", "astguard/international",
		"astguard/failed_probes", "astguard/auth_failures", "astguard/new_source"}
	if !slices.Equal(got, want) {
		t.Errorf("Scenarios() = %q, want %q", got, want)
	}
}
