package firewall

import (
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
		spec := canonical(dropSpec(a, c))
		line := "-A CH " + quoteArgs(spec)
		r, ok := parseDropRule("CH", line)
		if !ok || r.addr != a || !slices.Equal(r.spec, spec) {
			t.Fatalf("round trip of %q: %+v %v", line, r, ok)
		}
	})
}

func TestParseDropRule(t *testing.T) {
	a := netip.MustParseAddr("127.0.0.2")
	for line, want := range map[string]bool{
		`-A CH -s 127.0.0.2/32 -m comment --comment "x y" -j DROP`: true,
		`-A CH -s 127.0.0.2 -j DROP`:                               true,
		`-A CH -s 127.0.0.0/8 -j DROP`:                             false, // a network, not ours
		`-A CH -s 127.0.0.2/32 -j ACCEPT`:                          false,
		`-A OTHER -s 127.0.0.2/32 -j DROP`:                         false,
		`-N CH`:                                                    false,
		`-A CH -j DROP`:                                            false,
	} {
		r, ok := parseDropRule("CH", line)
		if ok != want || (ok && r.addr != a) {
			t.Errorf("parseDropRule(%q) = %v, %v; want ok=%v", line, r.addr, ok, want)
		}
	}
	r, _ := parseDropRule("CH", `-A CH -s ::ffff:127.0.0.2/128 -j DROP`)
	if r.addr != a {
		t.Errorf("mapped address not unmapped: %v", r.addr)
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
