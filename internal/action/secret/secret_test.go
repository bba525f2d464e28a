package secret

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/astguard/astguard/internal/action"
	"github.com/astguard/astguard/internal/action/actiontest"
	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/ami/amitest"
	"github.com/astguard/astguard/internal/ami/client"
)

var (
	sip200   = ami.Extension{Tech: ami.TechSIP, Name: "200"}
	pjsip300 = ami.Extension{Tech: ami.TechPJSIP, Name: "300"}
	settings = Settings{Timeout: time.Minute, Retry: action.Backoff{Attempts: 3, First: 100 * time.Millisecond}}
)

// The secret of the recorded rotation (asterisk-20/actions-dialog.txt).
const recordedSecret = "Qm7xT2vLp9RwZ4nK8sYd"

// replies holds the recorded Asterisk 20 answers, and Asterisk 22's
// PJSIPShowEndpoint of 300 (its AuthDetail shows the password in use).
type replies struct {
	getConfigSIP, updated, noCategory, endpoint300 actiontest.Reply
}

func load(t *testing.T) replies {
	d := actiontest.LoadDialog(t, "asterisk-20/actions-dialog.txt")
	d22 := actiontest.LoadDialog(t, "asterisk-22/actions-dialog.txt")
	return replies{d.Reply(t, "getconfig-sip"), d.Reply(t, "updateconfig-sip"), d.Reply(t, "updateconfig-missing-category"),
		d22.Reply(t, "pjsip-endpoint")}
}

// pbx answers GetConfig of sip.conf with the recorded reply, of pjsip.conf
// with the lab's real pjsip.conf, UpdateConfig with update, and
// PJSIPShowEndpoint with the recorded reply. An UpdateConfig answered
// Success is kept, as Asterisk does: GetConfig of sip.conf and the
// AuthDetail show the value it wrote.
func pbx(r replies, update func() actiontest.Reply) *actiontest.Doer {
	var mu sync.Mutex
	written := map[string]string{}
	return &actiontest.Doer{Answer: func(a ami.Action) actiontest.Reply {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case a.Name == "GetConfig" && actiontest.Header(a, "Filename") == "sip.conf":
			if v, ok := written["sip.conf"]; ok {
				return replaceLine(r.getConfigSIP, "secret=", "secret="+v)
			}
			return r.getConfigSIP
		case a.Name == "GetConfig":
			return actiontest.Reply{Resp: actiontest.GetConfig(amitest.DefaultPJSIPConf, "")}
		case a.Name == "UpdateConfig":
			rep := update()
			if rep.Err == nil && rep.Resp.OK() {
				written[actiontest.Header(a, "SrcFilename")] = actiontest.Header(a, "Value-000000")
			}
			return rep
		case a.Name == "PJSIPShowEndpoint" && actiontest.Header(a, "Endpoint") == "300":
			if v, ok := written["pjsip.conf"]; ok {
				return r.endpoint300.With("AuthDetail", "Password", v)
			}
			return r.endpoint300
		}
		return actiontest.Reply{Err: errors.New("unexpected " + a.Name)}
	}}
}

// replaceLine returns r with the GetConfig line starting with prefix
// replaced by line.
func replaceLine(r actiontest.Reply, prefix, line string) actiontest.Reply {
	hs := append([]ami.Header(nil), r.Resp.Headers...)
	for i := range hs {
		if strings.HasPrefix(hs[i].Key, "Line-") && strings.HasPrefix(hs[i].Value, prefix) {
			hs[i].Value = line
		}
	}
	return actiontest.Reply{Resp: ami.Response{Headers: hs}}
}

func TestPlanRecorded(t *testing.T) {
	r := load(t)
	d := pbx(r, nil)
	p, err := ConfigFiles{AMI: d}.Plan(t.Context(), sip200)
	if want := (Plan{Store: StoreFiles, File: "sip.conf", Section: "200", Key: "secret", Reload: "chan_sip"}); err != nil || p != want {
		t.Errorf("plan of SIP/200: %+v, %v; want %+v", p, err, want)
	}
	if a := d.Sent()[0]; actiontest.Header(a, "Filename") != "sip.conf" || actiontest.Header(a, "Category") != "200" {
		t.Errorf("GetConfig %+v, want sip.conf's [200]", a)
	}
	p, err = ConfigFiles{AMI: d}.Plan(t.Context(), pjsip300)
	if want := (Plan{Store: StoreFiles, File: "pjsip.conf", Section: "300-auth", Key: "password", Reload: "res_pjsip.so", Filter: "type=auth"}); err != nil || p != want {
		t.Errorf("plan of PJSIP/300: %+v, %v; want %+v", p, err, want)
	}
	if a := d.Sent()[1]; actiontest.Header(a, "Filename") != "pjsip.conf" || actiontest.Header(a, "Category") != "" {
		t.Errorf("GetConfig %+v, want all of pjsip.conf", a)
	}
	if p.String() != "password in [300-auth] of pjsip.conf" {
		t.Errorf("plan reads %q", p)
	}
}

func TestPlanRefusals(t *testing.T) {
	const endpoint = "[300]\ntype=endpoint\ncontext=from-internal\nauth=300-auth\naors=300\n"
	const aor = "[300]\ntype=aor\nmax_contacts=5\n"
	const auth = "[300-auth]\ntype=auth\nauth_type=userpass\nusername=300\npassword=Leaky300\n"
	for _, tc := range []struct {
		name   string
		ext    ami.Extension
		conf   string            // the file GetConfig reads
		reply  *actiontest.Reply // or this answer
		reason Reason
		why    string
		sent   int // GetConfig actions sent
	}{
		{"md5secret", sip200, "[200]\ntype=friend\nmd5secret=0123456789abcdef\nsecret=x\n", nil, MD5Secret, "uses md5secret", 1},
		{"no section: realtime", sip200, "[201]\ntype=friend\nsecret=y\n", nil, NoSection, "realtime (sippeers)", 1},
		{"sip.conf unreadable", sip200, "", &actiontest.Reply{Resp: ami.Response{Headers: []ami.Header{{Key: "Response", Value: "Error"}, {Key: "Message", Value: "Config file not found"}}}}, NoSection,
			"GetConfig of [200] in sip.conf failed (Config file not found)", 1},
		{"secret from a template", sip200, "[200](phones)\ntype=friend\nhost=dynamic\n", nil, Template, "no secret line of its own", 1},
		{"shared auth section", pjsip300, endpoint + auth + "[301]\ntype=endpoint\nauth=300-auth\n", nil, SharedAuth, "shared by endpoints 300, 301", 1},
		{"md5_cred", pjsip300, endpoint + "[300-auth]\ntype=auth\nmd5_cred=abc\npassword=x\n", nil, Digest, "uses md5_cred", 1},
		{"password_digest", pjsip300, endpoint + "[300-auth]\ntype=auth\npassword_digest=abc\n", nil, Digest, "uses password_digest", 1},
		{"no auth section", pjsip300, endpoint + aor, nil, NoSection, "no auth section [300-auth]", 1},
		{"no endpoint: realtime", pjsip300, aor + auth, nil, NoSection, "no endpoint [300]", 1},
		{"auth from a template", pjsip300, "[300]\ntype=endpoint\ncontext=x\n" + auth, nil, Template, "no auth= line of its own", 1},
		{"several auths", pjsip300, "[300]\ntype=endpoint\nauth=a,b\n" + auth, nil, SeveralAuths, "several auth sections", 1},
		{"no password line", pjsip300, endpoint + "[300-auth]\ntype=auth\nusername=300\n", nil, Template, "no password line of its own", 1},
		{"unsafe name", ami.Extension{Tech: ami.TechSIP, Name: "200]\nsecret=x"}, "", nil, UnsafeName, "is not a name the guard puts into a config action", 0},
		{"IAX2", ami.Extension{Tech: ami.TechIAX2, Name: "trunk"}, "", nil, NoSecret, "IAX2 channels have no secret", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := &actiontest.Doer{Answer: func(a ami.Action) actiontest.Reply {
				if tc.reply != nil {
					return *tc.reply
				}
				return actiontest.Reply{Resp: actiontest.GetConfig(tc.conf, actiontest.Header(a, "Category"))}
			}}
			_, err := ConfigFiles{AMI: d}.Plan(t.Context(), tc.ext)
			var ref *Refusal
			if !errors.As(err, &ref) || ref.Reason != tc.reason || !strings.Contains(ref.Why, tc.why) {
				t.Fatalf("err = %v, want a refusal %d with %q", err, tc.reason, tc.why)
			}
			if action.Retryable(err) {
				t.Error("a refusal is retryable")
			}
			if n := d.Count("GetConfig"); n != tc.sent {
				t.Errorf("%d GetConfig sent, want %d", n, tc.sent)
			}
		})
	}
}

// recorder is a secrets file that keeps its lines; fail makes the n-th
// Record (from 1) fail.
type recorder struct {
	lines []Line
	fail  int
}

const secretsPath = "/var/lib/astguard/secrets.jsonl"

func (r *recorder) Record(l Line) (string, error) {
	if len(r.lines)+1 == r.fail {
		r.fail = 0
		return secretsPath, errors.New("write " + secretsPath + ": no space left on device")
	}
	r.lines = append(r.lines, l)
	return secretsPath, nil
}

func (r *recorder) statuses() []Status {
	var s []Status
	for _, l := range r.lines {
		s = append(s, l.Status)
	}
	return s
}

func fixed() (string, error) { return recordedSecret, nil }

// noSecret checks that the secret appears nowhere but in the recorder.
func noSecret(t *testing.T, res Result) {
	t.Helper()
	if strings.Contains(res.Detail, recordedSecret) || res.Err != nil && strings.Contains(res.Err.Error(), recordedSecret) {
		t.Errorf("the secret leaks into the outcome: %+v", res.Outcome)
	}
}

// A rotation as recorded: planned, recorded pending, UpdateConfig (with the
// reload), recorded applied; the outcome names the secrets file.
func TestRotateRecorded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := load(t)
		d := pbx(r, func() actiontest.Reply { return r.updated })
		rec := &recorder{}
		res := Rotator{Store: ConfigFiles{AMI: d}, Generate: fixed}.Rotate(t.Context(), sip200, rec, settings)
		if res.Result != action.Done || res.Err != nil || res.Target != "SIP/200" || res.Action != action.RotateSecret || res.SecretsFile != secretsPath || res.RecordErr != nil {
			t.Fatalf("result %+v", res)
		}
		if want := "new secret in [200] of sip.conf, reloaded with chan_sip; checked: GetConfig of sip.conf shows it in [200]; the new secret is in " + secretsPath + ": the real phone needs it"; res.Detail != want {
			t.Errorf("detail %q, want %q", res.Detail, want)
		}
		if got := rec.statuses(); len(got) != 2 || got[0] != Pending || got[1] != Applied {
			t.Errorf("recorded %v, want pending then applied", got)
		}
		for _, l := range rec.lines {
			if l.Secret != recordedSecret || l.Extension != "SIP/200" {
				t.Errorf("recorded %+v", l)
			}
		}
		// The UpdateConfig the real Asterisk accepted.
		var up ami.Action
		for _, a := range d.Sent() {
			if a.Name == "UpdateConfig" {
				up = a
			}
		}
		want := []ami.Header{{Key: "SrcFilename", Value: "sip.conf"}, {Key: "DstFilename", Value: "sip.conf"}, {Key: "Reload", Value: "chan_sip"},
			{Key: "Action-000000", Value: "Update"}, {Key: "Cat-000000", Value: "200"}, {Key: "Var-000000", Value: "secret"}, {Key: "Value-000000", Value: recordedSecret}}
		if len(up.Headers) != len(want) {
			t.Fatalf("UpdateConfig %+v, want %+v", up.Headers, want)
		}
		for i := range want {
			if up.Headers[i] != want[i] {
				t.Errorf("UpdateConfig header %d: %+v, want %+v", i, up.Headers[i], want[i])
			}
		}
		noSecret(t, res)
	})
}

// PJSIP: the auth section's password, picked among same-named sections.
func TestRotatePJSIP(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := load(t)
		d := pbx(r, func() actiontest.Reply { return r.updated })
		rec := &recorder{}
		res := Rotator{Store: ConfigFiles{AMI: d}, Generate: fixed}.Rotate(t.Context(), pjsip300, rec, settings)
		if res.Result != action.Done || res.Plan.Section != "300-auth" || len(rec.lines) != 2 {
			t.Fatalf("result %+v, %d lines", res, len(rec.lines))
		}
		up := d.Sent()[1]
		if actiontest.Header(up, "Options-000000") != `catfilter="type=auth"` || actiontest.Header(up, "Reload") != "res_pjsip.so" || actiontest.Header(up, "Var-000000") != "password" {
			t.Errorf("UpdateConfig %+v", up)
		}
		if n := d.Count("PJSIPShowEndpoint"); n != 1 || !strings.Contains(res.Detail, "checked: PJSIPShowEndpoint 300 shows it in auth 300-auth") {
			t.Errorf("%d PJSIPShowEndpoint, detail %q; want the password read back once", n, res.Detail)
		}
	})
}

// UpdateConfig answered Success, but Asterisk still shows the old
// password (the reload did not take): failed, recorded as failed.
func TestRotatePJSIPNotTaken(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := load(t)
		d := &actiontest.Doer{Answer: func(a ami.Action) actiontest.Reply {
			switch a.Name {
			case "GetConfig":
				return actiontest.Reply{Resp: actiontest.GetConfig(amitest.DefaultPJSIPConf, "")}
			case "UpdateConfig":
				return r.updated
			}
			return r.endpoint300 // Password: Leaky300
		}}
		rec := &recorder{}
		res := Rotator{Store: ConfigFiles{AMI: d}, Generate: fixed}.Rotate(t.Context(), pjsip300, rec, settings)
		if res.Result != action.Failed || !errors.Is(res.Err, ErrNotTaken) || d.Count("PJSIPShowEndpoint") != 3 {
			t.Fatalf("result %+v after %d PJSIPShowEndpoint", res, d.Count("PJSIPShowEndpoint"))
		}
		if got := rec.statuses(); len(got) != 2 || got[1] != Failed {
			t.Errorf("recorded %v, want pending then failed", got)
		}
		if !strings.HasPrefix(res.Detail, "changed the password in [300-auth] of pjsip.conf, but the check could not confirm it: the old secret may still work") {
			t.Errorf("detail %q", res.Detail)
		}
		noSecret(t, res)
	})
}

// "Given category does not exist" is permanent: one UpdateConfig, the
// secret recorded as failed.
func TestRotatePermanentErrorNotRetried(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := load(t)
		d := pbx(r, func() actiontest.Reply { return r.noCategory })
		rec := &recorder{}
		res := Rotator{Store: ConfigFiles{AMI: d}, Generate: fixed}.Rotate(t.Context(), sip200, rec, settings)
		var ae *ami.ActionError
		if res.Result != action.Failed || !errors.As(res.Err, &ae) || ae.Message != "Given category does not exist" || res.Retryable {
			t.Fatalf("result %+v, want failed, not retryable", res)
		}
		if n := d.Count("UpdateConfig"); n != 1 {
			t.Errorf("%d UpdateConfig sent, want 1", n)
		}
		if got := rec.statuses(); len(got) != 2 || got[1] != Failed || res.SecretsFile != secretsPath {
			t.Errorf("recorded %v in %q, want pending then failed", got, res.SecretsFile)
		}
		if !strings.HasPrefix(res.Detail, "could not change the secret in [200] of sip.conf: the old secret is most likely still in use; by hand: ") {
			t.Errorf("detail %q", res.Detail)
		}
		noSecret(t, res)
	})
}

// A temporary error is retried.
func TestRotateTemporaryErrorRetried(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := load(t)
		fails := 2
		d := pbx(r, func() actiontest.Reply {
			if fails > 0 {
				fails--
				return actiontest.Reply{Resp: ami.Response{Headers: []ami.Header{{Key: "Response", Value: "Error"}, {Key: "Message", Value: "Save of config failed"}}}}
			}
			return r.updated
		})
		rec := &recorder{}
		res := Rotator{Store: ConfigFiles{AMI: d}, Generate: fixed}.Rotate(t.Context(), sip200, rec, settings)
		if res.Result != action.Done || d.Count("UpdateConfig") != 3 {
			t.Fatalf("result %+v after %d UpdateConfig, want done at the third", res, d.Count("UpdateConfig"))
		}
		if got := rec.statuses(); len(got) != 2 || got[1] != Applied {
			t.Errorf("recorded %v", got)
		}
	})
}

// A secrets file that cannot be written stops the rotation before the
// change: the secret would be lost.
func TestRotateSecretsFileUnwritable(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := load(t)
		d := pbx(r, func() actiontest.Reply { return r.updated })
		rec := &recorder{fail: 1}
		res := Rotator{Store: ConfigFiles{AMI: d}, Generate: fixed}.Rotate(t.Context(), sip200, rec, settings)
		if res.Result != action.Failed || res.Err == nil || d.Count("UpdateConfig") != 0 || len(rec.lines) != 0 {
			t.Fatalf("result %+v after %d UpdateConfig", res, d.Count("UpdateConfig"))
		}
		if !strings.Contains(res.Detail, "the secrets file "+secretsPath+" cannot be written, so the secret was not changed") {
			t.Errorf("detail %q", res.Detail)
		}
	})
}

// The change applied but its line not written: done, with the record's
// error for the caller to report.
func TestRotateOutcomeNotRecorded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := load(t)
		d := pbx(r, func() actiontest.Reply { return r.updated })
		rec := &recorder{fail: 2}
		res := Rotator{Store: ConfigFiles{AMI: d}, Generate: fixed}.Rotate(t.Context(), sip200, rec, settings)
		if res.Result != action.Done || res.RecordErr == nil || len(rec.lines) != 1 {
			t.Fatalf("result %+v, want done with a record error", res)
		}
	})
}

// A refusal skips: nothing generated, recorded or changed.
func TestRotateRefused(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := &actiontest.Doer{Answer: func(a ami.Action) actiontest.Reply {
			return actiontest.Reply{Resp: actiontest.GetConfig("[200]\ntype=friend\nmd5secret=0123\n", "200")}
		}}
		rec := &recorder{}
		generated := false
		res := Rotator{Store: ConfigFiles{AMI: d}, Generate: func() (string, error) { generated = true; return fixed() }}.Rotate(t.Context(), sip200, rec, settings)
		if res.Result != action.Skipped || res.Refusal == nil || res.Refusal.Reason != MD5Secret || !strings.HasPrefix(res.Detail, "cannot rotate here: ") {
			t.Fatalf("result %+v", res)
		}
		if generated || len(rec.lines) != 0 || d.Count("GetConfig") != 1 || d.Count("UpdateConfig") != 0 || res.SecretsFile != "" {
			t.Errorf("generated %v, %d lines, %d actions", generated, len(rec.lines), len(d.Sent()))
		}
	})
}

// A configuration that cannot be read fails after the retries, and says
// a later try may help.
func TestRotateUnreadable(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := &actiontest.Doer{Answer: func(ami.Action) actiontest.Reply { return actiontest.Reply{Err: client.ErrNotConnected} }}
		rec := &recorder{}
		res := Rotator{Store: ConfigFiles{AMI: d}, Generate: fixed}.Rotate(t.Context(), pjsip300, rec, settings)
		if res.Result != action.Failed || !errors.Is(res.Err, client.ErrNotConnected) || !res.Retryable || d.Count("GetConfig") != 3 || len(rec.lines) != 0 {
			t.Fatalf("result %+v after %d GetConfig", res, d.Count("GetConfig"))
		}
	})
}

// memStore is a Store of another kind (a database): a map of rows. Its
// check fails notTaken times with ErrNotTaken, then sees the row; fail,
// when set, is what Apply or (verify true) Verify fail with.
type memStore struct {
	mu       sync.Mutex
	rows     map[string]string
	notTaken int
	fail     error
	verify   bool // fail is Verify's, not Apply's
	applies  int
	verifies int
}

func (m *memStore) Plan(_ context.Context, ext ami.Extension) (Plan, error) {
	return Plan{Store: StoreRealtime, File: "sippeers", Section: ext.Name, Key: "secret"}, nil
}

func (m *memStore) Apply(_ context.Context, p Plan, secret string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.applies++
	if m.fail != nil && !m.verify {
		return m.fail
	}
	m.rows[p.Section] = secret
	return nil
}

func (m *memStore) Verify(_ context.Context, _ ami.Extension, p Plan, secret string) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.verifies++
	switch {
	case m.fail != nil && m.verify:
		return "", m.fail
	case m.notTaken > 0:
		m.notTaken--
		return "", ErrNotTaken
	case m.rows[p.Section] != secret:
		return "", ErrNotTaken
	}
	return "the row read back holds it", nil
}

func TestRotateAnotherStore(t *testing.T) {
	store := &memStore{rows: map[string]string{}}
	rec := &recorder{}
	res := Rotator{Store: store, Generate: fixed}.Rotate(t.Context(), sip200, rec, settings)
	if res.Result != action.Done || store.rows["200"] != recordedSecret || len(rec.lines) != 2 {
		t.Fatalf("result %+v, store %v", res, store.rows)
	}
	if want := "new secret of 200 in table sippeers; checked: the row read back holds it; the new secret is in " + secretsPath + ": the real phone needs it"; res.Detail != want {
		t.Errorf("detail %q, want %q", res.Detail, want)
	}
}

// A check that does not see the secret yet (a reload Asterisk runs after
// it answered) is made again: applied once it sees it.
func TestRotateCheckedAgain(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := &memStore{rows: map[string]string{}, notTaken: 2}
		rec := &recorder{}
		res := Rotator{Store: store, Generate: fixed}.Rotate(t.Context(), sip200, rec, settings)
		if res.Result != action.Done || store.applies != 1 || store.verifies != 3 {
			t.Fatalf("result %+v after %d applies, %d checks; want done, applied once, checked 3 times", res, store.applies, store.verifies)
		}
		if got := rec.statuses(); len(got) != 2 || got[1] != Applied {
			t.Errorf("recorded %v", got)
		}
	})
}

// A check that never sees the secret makes the rotation failed, recorded
// as failed: the outcome says where the old secret stands and what to do.
func TestRotateCheckFails(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := &memStore{rows: map[string]string{}, verify: true, fail: &Failure{Err: ErrNotTaken, Temporary: true,
			State: "the table holds the new secret, but Asterisk still has the old one", ByHand: "expire it from the cache"}}
		rec := &recorder{}
		res := Rotator{Store: store, Generate: fixed}.Rotate(t.Context(), sip200, rec, settings)
		if res.Result != action.Failed || !errors.Is(res.Err, ErrNotTaken) || store.applies != 1 || store.verifies != 3 {
			t.Fatalf("result %+v after %d applies, %d checks", res, store.applies, store.verifies)
		}
		if got := rec.statuses(); len(got) != 2 || got[1] != Failed {
			t.Errorf("recorded %v, want pending then failed", got)
		}
		want := "changed the secret of 200 in table sippeers, but the check failed: the table holds the new secret, but Asterisk still has the old one; by hand: expire it from the cache"
		if res.Detail != want {
			t.Errorf("detail %q\nwant %q", res.Detail, want)
		}
		noSecret(t, res)
	})
}

// A change that failed says what it left behind; a permanent one is not
// tried again, and nothing is checked.
func TestRotateApplyFailure(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := &memStore{rows: map[string]string{}, fail: &Failure{Err: errors.New("`fwconsole reload` failed (exit status 1)"),
			State: "the old secret is back in the sip table and still in use", ByHand: "find out why"}}
		rec := &recorder{}
		res := Rotator{Store: store, Generate: fixed}.Rotate(t.Context(), sip200, rec, settings)
		if res.Result != action.Failed || res.Retryable || store.applies != 1 || store.verifies != 0 {
			t.Fatalf("result %+v after %d applies, %d checks", res, store.applies, store.verifies)
		}
		want := "could not change the secret of 200 in table sippeers: the old secret is back in the sip table and still in use; by hand: find out why"
		if res.Detail != want {
			t.Errorf("detail %q\nwant %q", res.Detail, want)
		}
		if got := rec.statuses(); len(got) != 2 || got[1] != Failed {
			t.Errorf("recorded %v, want pending then failed", got)
		}
	})
}

func TestNew(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		s, err := New()
		if err != nil {
			t.Fatal(err)
		}
		if len(s) != Length || strings.Trim(s, alphabet) != "" || seen[s] {
			t.Fatalf("bad or repeated secret %q", s)
		}
		seen[s] = true
	}
}

// Auto takes the files for an extension whose section is there, and the
// realtime store for one that is not; each rotation's change and check
// go to the store that planned it. Without a realtime store, an extension
// not in the files is refused as before.
func TestAuto(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := load(t)
		d := pbx(r, func() actiontest.Reply { return r.updated })
		// GetConfig of sip.conf's [202]: no such category.
		d202 := &actiontest.Doer{Answer: func(a ami.Action) actiontest.Reply {
			if actiontest.Header(a, "Category") == "202" {
				return actiontest.Reply{Resp: actiontest.GetConfig("[200]\nsecret=x\n", "202")}
			}
			return d.Answer(a)
		}}
		rt := &memStore{rows: map[string]string{}}
		auto := Auto{Files: ConfigFiles{AMI: d202}, Realtime: rt}
		rec := &recorder{}
		res := Rotator{Store: auto, Generate: fixed}.Rotate(t.Context(), sip200, rec, settings)
		if res.Result != action.Done || res.Plan.Store != StoreFiles || rt.applies != 0 || d202.Count("UpdateConfig") != 1 {
			t.Errorf("SIP/200 (in sip.conf): %+v, %d realtime changes", res, rt.applies)
		}
		res = Rotator{Store: auto, Generate: fixed}.Rotate(t.Context(), ami.Extension{Tech: ami.TechSIP, Name: "202"}, rec, settings)
		if res.Result != action.Done || res.Plan.Store != StoreRealtime || rt.applies != 1 || rt.verifies != 1 || rt.rows["202"] != recordedSecret || d202.Count("UpdateConfig") != 1 {
			t.Errorf("SIP/202 (not in sip.conf): %+v", res)
		}
		res = Rotator{Store: Auto{Files: ConfigFiles{AMI: d202}}, Generate: fixed}.Rotate(t.Context(), ami.Extension{Tech: ami.TechSIP, Name: "202"}, rec, settings)
		if res.Result != action.Skipped || res.Refusal == nil || res.Refusal.Reason != NoSection {
			t.Errorf("SIP/202 without realtime: %+v", res)
		}
	})
}
