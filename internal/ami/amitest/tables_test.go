package amitest

import (
	"os"
	"testing"
)

// TestTablesMatchDialogs keeps the header lists of tables.go equal to the
// recorded replies they were taken from.
func TestTablesMatchDialogs(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		table  [][2]string
		dialog string
		aid    string
		first  string
	}{
		{"sipShowPeerFields", sipShowPeerFields, dialog20, "sip-peer", "Response"},
		{"contactListFields", contactListFields, dialog20, "pjsip-contacts", "ContactList"},
		{"endpointDetailFields", endpointDetailFields, dialog22, "pjsip-endpoint", "EndpointDetail"},
		{"authDetailFields", authDetailFields, dialog22, "pjsip-endpoint", "AuthDetail"},
		{"aorDetailFields", aorDetailFields, dialog22, "pjsip-endpoint", "AorDetail"},
		{"contactStatusDetailFields", contactStatusDetailFields, dialog22, "pjsip-endpoint", "ContactStatusDetail"},
		{"sipShowPeerFields11", sipShowPeerFields11, dialog11, "sip-peer", "Response"},
		{"peerEntryFields11", peerEntryFields11, dialog11, "sip-peers", "PeerEntry"},
	} {
		_, replies := dialogFor(t, tc.dialog, tc.aid)
		var want [][2]string
		for _, r := range replies {
			if r.hdrs[0][1] != tc.first && r.hdrs[0][0] != tc.first {
				continue
			}
			for _, h := range r.hdrs[1:] {
				if h[0] != "ActionID" {
					want = append(want, h)
				}
			}
			break
		}
		if len(want) != len(tc.table) {
			t.Errorf("%s: %d headers, dialog has %d", tc.name, len(tc.table), len(want))
			continue
		}
		for i := range want {
			if want[i] != tc.table[i] {
				t.Errorf("%s[%d] = %q, dialog %q", tc.name, i, tc.table[i], want[i])
			}
		}
	}
}

// TestEmbeddedConfs checks the embedded confs are the testdata copies.
func TestEmbeddedConfs(t *testing.T) {
	t.Parallel()
	for path, got := range map[string]string{
		"testdata/asterisk-20/pbx/sip.conf":   DefaultSIPConf,
		"testdata/asterisk-20/pbx/pjsip.conf": DefaultPJSIPConf,
		"testdata/asterisk-22/pbx/pjsip.conf": PJSIPConf22,
		// Asterisk 11's lab kept the same sip.conf: the fake uses one copy.
		"testdata/asterisk-11/pbx/sip.conf": DefaultSIPConf,
	} {
		b, err := os.ReadFile(path)
		if err != nil || string(b) != got || len(got) == 0 {
			t.Errorf("%s: embedded copy differs (%v)", path, err)
		}
	}
}

func TestEventMask(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]uint32{
		"":                     allClasses,
		"on":                   allClasses,
		"off":                  0,
		"no":                   0,
		"all":                  allClasses,
		"call,security,system": classCall | classSecurity | classSystem,
		" Call , SECURITY ":    classCall | classSecurity,
		"3":                    classSystem | classCall,
		"nosuchclass":          0,
		"dialplan,nosuchclass": 1 << 11,
	} {
		if got := eventMask(in); got != want {
			t.Errorf("eventMask(%q) = %#x, want %#x", in, got, want)
		}
	}
}
