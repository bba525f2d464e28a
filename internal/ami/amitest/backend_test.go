package amitest

import (
	"bytes"
	"strings"
	"sync"
	"testing"
	"time"
)

// rtRows is a realtime table for the server's hooks.
type rtRows struct {
	mu    sync.Mutex
	auths map[string]map[string]string
	peers map[string]string
	reads int
}

func (r *rtRows) auth(id string) (map[string]string, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reads++
	row, ok := r.auths[id]
	if !ok {
		return nil, false
	}
	out := map[string]string{}
	for k, v := range row {
		out[k] = v
	}
	return out, true
}

func (r *rtRows) peer(name string) (string, string, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s, ok := r.peers[name]
	return s, "", ok
}

func (r *rtRows) set(id, password string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.auths[id]["password"] = password
}

func newRows() *rtRows {
	return &rtRows{
		auths: map[string]map[string]string{
			"300-auth": {"password": "Leaky300", "username": "300", "auth_type": "userpass"},
			"301-auth": {"password": "Strong301secret", "username": "301", "auth_type": "userpass"},
		},
		peers: map[string]string{"200": "Leaky200", "201": "Strong201secret"},
	}
}

// authPassword asks PJSIPShowEndpoint for endpoint 300's AuthDetail
// password.
func authPassword(t *testing.T, c *client, aid string) string {
	t.Helper()
	c.send("Action: PJSIPShowEndpoint", "Endpoint: 300", "ActionID: "+aid)
	_, items, _, _ := c.list(aid, "EndpointDetailComplete")
	for _, it := range items {
		if it.isEvent("AuthDetail") && it.get("ObjectName") == "300-auth" {
			return it.get("Password")
		}
	}
	t.Fatalf("no AuthDetail of 300-auth")
	return ""
}

// A realtime auth behind a sorcery memory cache: PJSIPShowEndpoint shows
// the row as first read until SorceryMemoryCacheExpireObject expires it,
// which answers as res_sorcery_memory_cache.c does; the model's thief
// is locked out once the password Asterisk reads changed.
func TestRealtimeAuthCache(t *testing.T) {
	t.Parallel()
	rows := newRows()
	s := start(t, Options{Realtime: &Realtime{Auth: rows.auth, AuthCache: "auths"}})
	c := dial(t, s)
	c.login("")
	if pw := authPassword(t, c, "e1"); pw != "Leaky300" {
		t.Fatalf("password %q", pw)
	}
	rows.set("300-auth", "NewPass300")
	if pw := authPassword(t, c, "e2"); pw != "Leaky300" {
		t.Errorf("password %q: the cache should hold the old one", pw)
	}
	s.mu.Lock()
	rotated := s.pbx.pjRotated("300")
	s.mu.Unlock()
	if rotated {
		t.Error("the model sees the new password through the cache")
	}
	for _, tc := range []struct {
		lines []string
		resp  string
	}{
		{[]string{"Cache: auths", "Object: 300-auth"}, "Success/The provided object was expired from the cache"},
		{[]string{"Cache: auths", "Object: 300-auth"}, "Error/The provided object could not be expired from the cache"},
		{[]string{"Cache: endpoints", "Object: 300"}, "Error/The provided cache does not exist"},
		{[]string{"Object: 300"}, "Error/SorceryMemoryCacheExpireObject requires that a cache name be provided."},
		{[]string{"Cache: auths"}, "Error/SorceryMemoryCacheExpireObject requires that an object name be provided"},
	} {
		c.send(append(append([]string{"Action: SorceryMemoryCacheExpireObject"}, tc.lines...), "ActionID: x")...)
		f, _ := c.response("x")
		if got := f.get("Response") + "/" + f.get("Message"); got != tc.resp {
			t.Errorf("%v: %s, want %s", tc.lines, got, tc.resp)
		}
	}
	if pw := authPassword(t, c, "e3"); pw != "NewPass300" {
		t.Errorf("password %q after the expiry, want the row's", pw)
	}
	s.mu.Lock()
	rotated = s.pbx.pjRotated("300")
	s.mu.Unlock()
	if !rotated || strings.Join(s.Expired(), ",") != "auths/300-auth" {
		t.Errorf("rotated %v, expired %q", rotated, s.Expired())
	}
}

// PJSIPShowEndpoints lists each endpoint of pjsip.conf with its auths.
func TestPJSIPShowEndpoints(t *testing.T) {
	t.Parallel()
	s := start(t, Options{})
	c := dial(t, s)
	c.login("")
	c.send("Action: PJSIPShowEndpoints", "ActionID: eps")
	_, items, done, _ := c.list("eps", "EndpointListComplete")
	var got []string
	for _, it := range items {
		got = append(got, it.get("ObjectName")+":"+it.get("Auths")+":"+it.get("Aor"))
	}
	if strings.Join(got, " ") != "300:300-auth:300 301:301-auth:301" || done.get("ListItems") != "2" {
		t.Errorf("endpoints %q, %v", got, done.hdrs)
	}
}

// Asterisk's message ends in a newline of its own: an empty line follows
// the reply (the bytes a real Asterisk sends).
func TestSorceryReplyBytes(t *testing.T) {
	t.Parallel()
	s := start(t, Options{Realtime: &Realtime{Auth: newRows().auth, AuthCache: "auths"}})
	c := dial(t, s)
	c.login("")
	c.ping("drain")
	c.send("Action: SorceryMemoryCacheExpireObject", "Cache: auths", "Object: 301-auth", "ActionID: raw")
	want := "Response: Error\r\nActionID: raw\r\nMessage: The provided object could not be expired from the cache\r\n\r\n\r\n"
	got := make([]byte, 0, len(want))
	buf := make([]byte, len(want))
	c.conn.SetReadDeadline(time.Now().Add(readTimeout))
	for len(got) < len(want) {
		n, err := c.conn.Read(buf[:len(want)-len(got)])
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, buf[:n]...)
	}
	if !bytes.Equal(got, []byte(want)) {
		t.Errorf("reply %q\nwant  %q", got, want)
	}
}

// Without a cache every use reads the row; chan_sip peers' secrets come
// from their table too; Asterisk 11 has no such action.
func TestRealtimeWithoutCache(t *testing.T) {
	t.Parallel()
	rows := newRows()
	s := start(t, Options{Realtime: &Realtime{Auth: rows.auth, Peer: rows.peer}})
	c := dial(t, s)
	c.login("")
	rows.set("300-auth", "NewPass300")
	if pw := authPassword(t, c, "e1"); pw != "NewPass300" {
		t.Errorf("password %q, want the row's at once", pw)
	}
	s.mu.Lock()
	if s.pbx.sipRotated("200") {
		t.Error("200 rotated before its row changed")
	}
	rows.mu.Lock()
	rows.peers["200"] = "NewSecret200"
	rows.mu.Unlock()
	if !s.pbx.sipRotated("200") || s.pbx.sipRotated("201") {
		t.Error("the model does not follow the sippeers row")
	}
	s.mu.Unlock()

	old := start(t, Options{Version: Asterisk11})
	c11 := dial(t, old)
	c11.login("")
	c11.send("Action: SorceryMemoryCacheExpireObject", "Cache: auths", "Object: 300-auth", "ActionID: x")
	if f, _ := c11.response("x"); !strings.HasPrefix(f.get("Message"), "Invalid/unknown command") {
		t.Errorf("Asterisk 11: %q", f.get("Message"))
	}
}

// FreePBX: a reload of everything writes the files again from the
// database (Regenerate), then reloads them; a module reload does not.
func TestRegenerateAtReload(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	secret := "Leaky200"
	s := start(t, Options{Regenerate: func() (map[string]string, error) {
		mu.Lock()
		defer mu.Unlock()
		return map[string]string{
			"sip.conf":            strings.Replace(DefaultSIPConf, "secret=Leaky200", "secret="+secret, 1),
			"sip_additional.conf": "[200]\ntype=friend\nsecret=" + secret + "\n",
		}, nil
	}})
	c := dial(t, s)
	c.login("")
	mu.Lock()
	secret = "NewSecret200"
	mu.Unlock()
	c.send("Action: Reload", "Module: res_pjsip.so", "ActionID: r1")
	c.response("r1")
	if s.Regenerated() != 0 {
		t.Fatal("a module reload wrote the files again")
	}
	c.send("Action: Reload", "ActionID: r2")
	if f, _ := c.response("r2"); f.get("Response") != "Success" || s.Regenerated() != 1 {
		t.Fatalf("reload: %v, regenerated %d", f.hdrs, s.Regenerated())
	}
	c.send("Action: GetConfig", "Filename: sip_additional.conf", "Category: 200", "ActionID: g")
	if f, _ := c.response("g"); f.get("Line-000000-000001") != "secret=NewSecret200" {
		t.Errorf("GetConfig: %v", f.hdrs)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.pbx.sipRotated("200") || s.pbx.sipRotated("201") {
		t.Error("the loaded secrets do not follow the files written")
	}
}
