package guard

import (
	"strings"
	"testing"

	"github.com/astguard/astguard/internal/ami"
)

// getConfig builds GetConfig's numbered reply from sections of key=value lines.
func getConfig(sections ...[]string) ami.Response {
	r := ami.Response{Headers: []ami.Header{{Key: "Response", Value: "Success"}}}
	for i, sec := range sections {
		r.Headers = append(r.Headers, ami.Header{Key: pad("Category-", i), Value: sec[0]})
		for j, l := range sec[1:] {
			r.Headers = append(r.Headers, ami.Header{Key: pad("Line-", i) + "-" + pad6(j), Value: l})
		}
	}
	return r
}

func pad(p string, i int) string { return p + pad6(i) }

func pad6(i int) string {
	s := "000000" + itoa(i)
	return s[len(s)-6:]
}

func itoa(i int) string {
	if i == 0 {
		return "0"
	}
	var b []byte
	for ; i > 0; i /= 10 {
		b = append([]byte{byte('0' + i%10)}, b...)
	}
	return string(b)
}

func TestPlanSIP(t *testing.T) {
	for _, tc := range []struct {
		name     string
		sections [][]string
		refusal  string // substring; "" = a plan
	}{
		{"the recorded [200]", [][]string{{"200", "type=friend", "host=dynamic", "secret=Leaky200", "context=from-internal"}}, ""},
		{"md5secret wins", [][]string{{"200", "type=friend", "md5secret=0123456789abcdef", "secret=x"}}, "uses md5secret"},
		{"no section: realtime", nil, "realtime (sippeers)"},
		{"secret from a template", [][]string{{"200", "type=friend", "host=dynamic"}}, "no secret line of its own"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := planSIP(parseGetConfig(getConfig(tc.sections...)), "200")
			if tc.refusal == "" {
				if err != nil || r != (rotation{file: "sip.conf", category: "200", key: "secret", reload: "chan_sip"}) {
					t.Fatalf("plan %+v, %v", r, err)
				}
				return
			}
			var ref *refusal
			if err == nil || !strings.Contains(err.Error(), tc.refusal) {
				t.Fatalf("err = %v, want a refusal with %q", err, tc.refusal)
			}
			if !asRefusal(err, &ref) {
				t.Errorf("%v is not a refusal", err)
			}
		})
	}
}

func asRefusal(err error, ref **refusal) bool {
	r, ok := err.(*refusal)
	*ref = r
	return ok
}

func TestPlanPJSIP(t *testing.T) {
	endpoint := []string{"300", "type=endpoint", "context=from-internal", "auth=300-auth", "aors=300"}
	aor := []string{"300", "type=aor", "max_contacts=5"}
	auth := []string{"300-auth", "type=auth", "auth_type=userpass", "username=300", "password=Leaky300"}
	for _, tc := range []struct {
		name     string
		sections [][]string
		refusal  string
	}{
		{"the recorded 300", [][]string{endpoint, auth, aor}, ""},
		{"shared auth section", [][]string{endpoint, auth, {"301", "type=endpoint", "auth=300-auth"}}, "shared by endpoints 300, 301"},
		{"md5_cred", [][]string{endpoint, {"300-auth", "type=auth", "md5_cred=abc", "password=x"}}, "uses md5_cred"},
		{"no auth section", [][]string{endpoint, aor}, "no auth section [300-auth]"},
		{"no endpoint", [][]string{aor, auth}, "no endpoint [300]"},
		{"auth from a template", [][]string{{"300", "type=endpoint", "context=x"}, auth}, "no auth= line of its own"},
		{"several auths", [][]string{{"300", "type=endpoint", "auth=a,b"}, auth}, "several auth sections"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := planPJSIP(parseGetConfig(getConfig(tc.sections...)), "300")
			if tc.refusal == "" {
				want := rotation{file: "pjsip.conf", category: "300-auth", key: "password", reload: "res_pjsip.so", catfilter: "type=auth"}
				if err != nil || r != want {
					t.Fatalf("plan %+v, %v", r, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.refusal) {
				t.Fatalf("err = %v, want a refusal with %q", err, tc.refusal)
			}
		})
	}
}

func TestNewSecret(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		s, err := newSecret()
		if err != nil {
			t.Fatal(err)
		}
		if len(s) < 20 || strings.Trim(s, secretAlphabet) != "" || seen[s] {
			t.Fatalf("bad or repeated secret %q", s)
		}
		seen[s] = true
	}
}

func TestChannelRegexEscapes(t *testing.T) {
	for _, tc := range []struct {
		tech, name, want string
		ok               bool
	}{
		{"SIP", "200", `/^SIP\/200-[0-9a-f]{8}$/`, true},
		{"PJSIP", "a.b+c*", `/^PJSIP\/a\.b\+c\*-[0-9a-f]{8}$/`, true},
		{"IAX2", "trunk", `/^IAX2\/trunk-[0-9]+$/`, true},
		{"SIP", "x|y", "", false},
		{"SIP", "a\r\nb", "", false},
		{"Local", "200", "", false},
	} {
		tech := map[string]int{"SIP": 1, "PJSIP": 2, "IAX2": 3, "Local": 4}[tc.tech]
		got, ok := channelRegex(amiTech(tech), tc.name)
		if got != tc.want || ok != tc.ok {
			t.Errorf("channelRegex(%s, %q) = %q, %v; want %q, %v", tc.tech, tc.name, got, ok, tc.want, tc.ok)
		}
	}
}

func amiTech(i int) ami.Tech { return ami.Tech(i) }
