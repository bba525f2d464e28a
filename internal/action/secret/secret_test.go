package secret

import (
	"context"
	"errors"
	"strings"
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

// replies holds the recorded Asterisk 20 answers.
type replies struct {
	getConfigSIP, updated, noCategory actiontest.Reply
}

func load(t *testing.T) replies {
	d := actiontest.LoadDialog(t, "asterisk-20/actions-dialog.txt")
	return replies{d.Reply(t, "getconfig-sip"), d.Reply(t, "updateconfig-sip"), d.Reply(t, "updateconfig-missing-category")}
}

// pbx answers GetConfig of sip.conf with the recorded reply, of pjsip.conf
// with the lab's real pjsip.conf, and UpdateConfig with update.
func pbx(r replies, update func() actiontest.Reply) *actiontest.Doer {
	return &actiontest.Doer{Answer: func(a ami.Action) actiontest.Reply {
		switch {
		case a.Name == "GetConfig" && actiontest.Header(a, "Filename") == "sip.conf":
			return r.getConfigSIP
		case a.Name == "GetConfig":
			return actiontest.Reply{Resp: actiontest.GetConfig(amitest.DefaultPJSIPConf, "")}
		case a.Name == "UpdateConfig":
			return update()
		}
		return actiontest.Reply{Err: errors.New("unexpected " + a.Name)}
	}}
}

func TestPlanRecorded(t *testing.T) {
	r := load(t)
	d := pbx(r, nil)
	p, err := ConfigFiles{Doer: d}.Plan(t.Context(), sip200)
	if want := (Plan{File: "sip.conf", Section: "200", Key: "secret", Reload: "chan_sip"}); err != nil || p != want {
		t.Errorf("plan of SIP/200: %+v, %v; want %+v", p, err, want)
	}
	if a := d.Sent()[0]; actiontest.Header(a, "Filename") != "sip.conf" || actiontest.Header(a, "Category") != "200" {
		t.Errorf("GetConfig %+v, want sip.conf's [200]", a)
	}
	p, err = ConfigFiles{Doer: d}.Plan(t.Context(), pjsip300)
	if want := (Plan{File: "pjsip.conf", Section: "300-auth", Key: "password", Reload: "res_pjsip.so", Filter: "type=auth"}); err != nil || p != want {
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
			_, err := ConfigFiles{Doer: d}.Plan(t.Context(), tc.ext)
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
		res := Rotator{Store: ConfigFiles{Doer: d}, Generate: fixed}.Rotate(t.Context(), sip200, rec, settings)
		if res.Result != action.Done || res.Err != nil || res.Target != "SIP/200" || res.Action != action.RotateSecret || res.SecretsFile != secretsPath || res.RecordErr != nil {
			t.Fatalf("result %+v", res)
		}
		if want := "new secret in [200] of sip.conf, reloaded with chan_sip; the new secret is in " + secretsPath + ": the real phone needs it"; res.Detail != want {
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
		res := Rotator{Store: ConfigFiles{Doer: d}, Generate: fixed}.Rotate(t.Context(), pjsip300, rec, settings)
		if res.Result != action.Done || res.Plan.Section != "300-auth" || len(rec.lines) != 2 {
			t.Fatalf("result %+v, %d lines", res, len(rec.lines))
		}
		up := d.Sent()[1]
		if actiontest.Header(up, "Options-000000") != `catfilter="type=auth"` || actiontest.Header(up, "Reload") != "res_pjsip.so" || actiontest.Header(up, "Var-000000") != "password" {
			t.Errorf("UpdateConfig %+v", up)
		}
	})
}

// "Given category does not exist" is permanent: one UpdateConfig, the
// secret recorded as failed.
func TestRotatePermanentErrorNotRetried(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := load(t)
		d := pbx(r, func() actiontest.Reply { return r.noCategory })
		rec := &recorder{}
		res := Rotator{Store: ConfigFiles{Doer: d}, Generate: fixed}.Rotate(t.Context(), sip200, rec, settings)
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
		if res.Detail != "could not change the secret in [200] of sip.conf" {
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
		res := Rotator{Store: ConfigFiles{Doer: d}, Generate: fixed}.Rotate(t.Context(), sip200, rec, settings)
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
		res := Rotator{Store: ConfigFiles{Doer: d}, Generate: fixed}.Rotate(t.Context(), sip200, rec, settings)
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
		res := Rotator{Store: ConfigFiles{Doer: d}, Generate: fixed}.Rotate(t.Context(), sip200, rec, settings)
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
		res := Rotator{Store: ConfigFiles{Doer: d}, Generate: func() (string, error) { generated = true; return fixed() }}.Rotate(t.Context(), sip200, rec, settings)
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
		res := Rotator{Store: ConfigFiles{Doer: d}, Generate: fixed}.Rotate(t.Context(), pjsip300, rec, settings)
		if res.Result != action.Failed || !errors.Is(res.Err, client.ErrNotConnected) || !res.Retryable || d.Count("GetConfig") != 3 || len(rec.lines) != 0 {
			t.Fatalf("result %+v after %d GetConfig", res, d.Count("GetConfig"))
		}
	})
}

// memStore is a Store of another kind (a database): what the Rotator
// needs of it is Plan and Apply.
type memStore map[string]string

func (m memStore) Plan(_ context.Context, ext ami.Extension) (Plan, error) {
	return Plan{File: "sippeers", Section: ext.Name, Key: "secret"}, nil
}

func (m memStore) Apply(_ context.Context, p Plan, secret string) error {
	m[p.Section] = secret
	return nil
}

func TestRotateAnotherStore(t *testing.T) {
	store := memStore{}
	rec := &recorder{}
	res := Rotator{Store: store, Generate: fixed}.Rotate(t.Context(), sip200, rec, settings)
	if res.Result != action.Done || store["200"] != recordedSecret || len(rec.lines) != 2 {
		t.Fatalf("result %+v, store %v", res, store)
	}
	if want := "new secret in [200] of sippeers; the new secret is in " + secretsPath + ": the real phone needs it"; res.Detail != want {
		t.Errorf("detail %q, want %q", res.Detail, want)
	}
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
