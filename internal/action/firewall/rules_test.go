package firewall

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestSplitRule(t *testing.T) {
	cases := []struct {
		line string
		want []string
	}{
		{`-A X -s 127.0.0.2/32 -m comment --comment "a b" -j DROP`,
			[]string{"-A", "X", "-s", "127.0.0.2/32", "-m", "comment", "--comment", "a b", "-j", "DROP"}},
		{`-A X -s 127.0.0.2/32 -m comment --comment plain -j DROP`,
			[]string{"-A", "X", "-s", "127.0.0.2/32", "-m", "comment", "--comment", "plain", "-j", "DROP"}},
		{`-A X --comment "q \"x\" \\ y" -j DROP`,
			[]string{"-A", "X", "--comment", `q "x" \ y`, "-j", "DROP"}},
		{`-A X --comment "" -j DROP`, []string{"-A", "X", "--comment", "", "-j", "DROP"}},
		{`-N X`, []string{"-N", "X"}},
	}
	for _, c := range cases {
		got, err := splitRule(c.line)
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("splitRule(%q) = %q, %v; want %q", c.line, got, err, c.want)
		}
	}
	if _, err := splitRule(`-A X --comment "open`); err == nil {
		t.Error("unterminated quote accepted")
	}
}

func FuzzSplitRuleRoundTrip(f *testing.F) {
	f.Add("auth_failures critical: 5 failed authentications in 1m", "192.0.2.1")
	f.Add(`x"y\z`, "2001:db8::1")
	f.Fuzz(func(t *testing.T, comment, addr string) {
		a, err := netip.ParseAddr(addr)
		if err != nil {
			return
		}
		a, err = NormalizeAddr(a)
		if err != nil {
			return
		}
		c := SanitizeComment(comment)
		spec := canonical(dropSpec(pfx(a), c))
		line := "-A CH " + quoteArgs(spec)
		r, ok := parseDropRule("CH", line)
		if !ok || r.prefix != pfx(a) || !slices.Equal(r.spec, spec) {
			t.Fatalf("round trip of %q: %+v %v", line, r, ok)
		}
	})
}

func TestParseDropRule(t *testing.T) {
	for line, want := range map[string]string{
		`-A CH -s 127.0.0.2/32 -m comment --comment "x y" -j DROP`:  "127.0.0.2/32",
		`-A CH -s 127.0.0.2 -j DROP`:                                "127.0.0.2/32",
		`-A CH -s 2001:db8:1:2::/64 -j DROP`:                        "2001:db8:1:2::/64",
		`-A CH -s ::ffff:127.0.0.2/128 -j DROP`:                     "127.0.0.2/32", // unmapped
		`-A CH -s 127.0.0.2/32 -j ACCEPT`:                           "",
		`-A OTHER -s 127.0.0.2/32 -j DROP`:                          "",
		`-N CH`:                                                     "",
		`-A CH -j DROP`:                                             "",
		`-A CH -s 10.0.0.1/32 -m set --match-set CH-a4 src -j DROP`: "",
	} {
		r, ok := parseDropRule("CH", line)
		got := ""
		if ok {
			got = r.prefix.String()
		}
		if got != want {
			t.Errorf("parseDropRule(%q) = %q, want %q", line, got, want)
		}
	}
}

func TestMatchedSet(t *testing.T) {
	for line, want := range map[string]string{
		`-A CH -m set --match-set CH-a4 src -j DROP`:    "CH-a4",
		`-A CH -m set --match-set CH-n6 src -j DROP`:    "CH-n6",
		`-A CH -m set --match-set CH-a4 dst -j DROP`:    "",
		`-A CH -m set --match-set CH-a4 src -j ACCEPT`:  "",
		`-A OTHER -m set --match-set CH-a4 src -j DROP`: "",
		`-A CH -s 127.0.0.2/32 -j DROP`:                 "",
	} {
		if got := matchedSet("CH", line); got != want {
			t.Errorf("matchedSet(%q) = %q, want %q", line, got, want)
		}
	}
}

func TestNormalizePrefix(t *testing.T) {
	for in, want := range map[string]string{
		"::ffff:203.0.113.9/128": "203.0.113.9/32",
		"::ffff:203.0.113.0/120": "203.0.113.0/24",
		"2001:db8:1:2::5/64":     "2001:db8:1:2::/64",
		"203.0.113.0/24":         "203.0.113.0/24",
		"0.0.0.0/0":              "",
		"10.0.0.0/7":             "",
		"::/0":                   "",
		"2000::/15":              "",
		"fe80::/64":              "",
		"ff02::/16":              "",
		"224.0.0.0/8":            "",
		"0.0.0.0/32":             "",
		"255.255.255.255/32":     "",
	} {
		got, err := NormalizePrefix(netip.MustParsePrefix(in))
		switch {
		case want == "" && !errors.Is(err, ErrInvalidAddr):
			t.Errorf("NormalizePrefix(%s) = %v, %v; want ErrInvalidAddr", in, got, err)
		case want != "" && (err != nil || got.String() != want):
			t.Errorf("NormalizePrefix(%s) = %v, %v; want %s", in, got, err, want)
		}
	}
	if _, err := NormalizePrefix(netip.Prefix{}); !errors.Is(err, ErrInvalidAddr) {
		t.Errorf("zero prefix: %v", err)
	}
}

func TestIsJump(t *testing.T) {
	if !isJump("INPUT", "CH", "-A INPUT -j CH") {
		t.Error("plain jump not recognized")
	}
	for _, l := range []string{"-A INPUT -s 1.2.3.4/32 -j CH", "-A INPUT -j CH2", "-A FORWARD -j CH", "-N CH"} {
		if isJump("INPUT", "CH", l) {
			t.Errorf("%q taken for our jump", l)
		}
	}
}

func TestSanitizeComment(t *testing.T) {
	for in, want := range map[string]string{
		"auth_failures critical: 5 failed authentications in 1m": "auth_failures critical: 5 failed authentications in 1m",
		`say "hi" 'x' \n` + "`cmd`":                              "say _hi_ _x_ _n_cmd_",
		"tab\there\nnewline\x00nul":                              "tab_here_newline_nul",
		"ünïcode":                                                "_n_code",
		"   ":                                                    "astguard",
		"":                                                       "astguard",
	} {
		if got := SanitizeComment(in); got != want {
			t.Errorf("SanitizeComment(%q) = %q, want %q", in, got, want)
		}
	}
	long := SanitizeComment(strings.Repeat("é", 500))
	if len(long) != MaxCommentLen {
		t.Errorf("len = %d, want %d", len(long), MaxCommentLen)
	}
}

func TestNormalizeAddr(t *testing.T) {
	got, err := NormalizeAddr(netip.MustParseAddr("::ffff:203.0.113.9"))
	if err != nil || got != netip.MustParseAddr("203.0.113.9") {
		t.Fatalf("got %v, %v", got, err)
	}
}
