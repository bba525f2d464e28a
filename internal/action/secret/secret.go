// Package secret gives an extension a new SIP secret: it finds where the
// secret lives (a Store), refuses where changing it would not lock the
// thief out or would lock others out, generates a random one, records it
// for the administrator (a Recorder: the secrets file) before and after
// the change, puts it into place and checks that Asterisk took it.
//
// Use, per rotation:
//
//	rot := secret.Rotator{Store: secret.ConfigFiles{AMI: eventsSession}}
//	res := rot.Rotate(ctx, ami.Extension{Tech: ami.TechSIP, Name: "200"}, secretsFile, settings)
//
// The secret never appears in an outcome, an error or a detail: only the
// Recorder gets it.
package secret

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"time"

	"github.com/astguard/astguard/internal/action"
	"github.com/astguard/astguard/internal/ami"
)

// Store is where extensions' secrets live: config files changed over AMI
// (ConfigFiles), or a database (package sqlstore: FreePBX's, Asterisk
// realtime's).
type Store interface {
	// Plan finds where ext's secret is, or returns a *Refusal when the
	// guard must not change it there (the refusal says what to do
	// instead). Other errors are failures to read.
	Plan(ctx context.Context, ext ami.Extension) (Plan, error)
	// Apply puts secret where p says and makes Asterisk use it. An error
	// that knows what it left behind is a *Failure.
	Apply(ctx context.Context, p Plan, secret string) error
	// Verify checks that ext's secret is now secret where Asterisk takes
	// it from, and says how it checked ("PJSIPShowEndpoint 300 shows it
	// in auth 300-auth"), with any advice for the administrator. It
	// returns an error when the secret is not (yet) there: ErrNotTaken,
	// or a *Failure. It never puts a secret into an error or a text.
	Verify(ctx context.Context, ext ami.Extension, p Plan, secret string) (string, error)
}

// Plan is where a secret goes.
type Plan struct {
	// Store names the store that holds it: "files", "freepbx", "realtime".
	Store string
	// File is the file (or table) holding it: "sip.conf", "pjsip.conf",
	// "sip", "ps_auths".
	File string
	// Section is its section (category, or row): "200", "300-auth".
	Section string
	// Key is the setting (or column): "secret", "password".
	Key string
	// Reload is what makes Asterisk read it again: "chan_sip",
	// "res_pjsip.so"; "" when nothing needs reloading.
	Reload string
	// Filter picks the section among others of the same name (pjsip.conf
	// has an endpoint, an aor and an auth called alike): "type=auth".
	Filter string
}

// String says where the secret goes: "secret in [200] of sip.conf", or
// for a database "password of 300-auth in table ps_auths".
func (p Plan) String() string {
	if p.Store == StoreFiles || p.Store == "" {
		return fmt.Sprintf("%s in [%s] of %s", p.Key, p.Section, p.File)
	}
	return fmt.Sprintf("%s of %s in table %s", p.Key, p.Section, p.File)
}

// The names of the stores (Plan.Store).
const (
	StoreFiles    = "files"
	StoreFreePBX  = "freepbx"
	StoreRealtime = "realtime"
)

// ErrNotTaken is Verify's error when Asterisk (or the store) does not show
// the new secret yet: a retry after a pause may see it.
var ErrNotTaken = errors.New("the new secret is not in use yet")

// Failure is a change that did not take, with what it left behind: the
// state of the old secret and what the administrator must do by hand.
type Failure struct {
	Err error
	// State says where the old (and the new) secret stand: "the old
	// secret is back in the sip table and still in use".
	State string
	// ByHand says what to do: "run fwconsole reload ...".
	ByHand string
	// Temporary marks a failure a retry may get past (a database that
	// is down); the others are permanent.
	Temporary bool
}

func (f *Failure) Error() string { return f.Err.Error() }

func (f *Failure) Unwrap() error { return f.Err }

// Is makes a failure that is not Temporary match action.ErrPermanent.
func (f *Failure) Is(target error) bool { return !f.Temporary && target == action.ErrPermanent }

// Reason is why a rotation is refused.
type Reason uint8

// The refusals.
const (
	// UnsafeName: a name the guard never puts into a config action.
	UnsafeName Reason = iota + 1
	// NoSecret: the technology has no secret the guard rotates (IAX2,
	// Local).
	NoSecret
	// NoSection: the file has no section of the extension (or its auth):
	// realtime, or an #include the guard cannot edit.
	NoSection
	// MD5Secret: chan_sip's md5secret wins over secret.
	MD5Secret
	// Digest: PJSIP's md5_cred or password_digest wins over password.
	Digest
	// Template: the secret (or PJSIP's auth=) is not set in the section
	// itself, but by a template shared with others.
	Template
	// SeveralAuths: the endpoint lists several auth sections.
	SeveralAuths
	// SharedAuth: other endpoints use the same auth section: changing it
	// would lock them out.
	SharedAuth
)

// Refusal is a rotation the guard will not do, with what to do instead.
// It is permanent: no retry changes the configuration.
type Refusal struct {
	Reason Reason
	Why    string
}

func (r *Refusal) Error() string { return r.Why }

// Is makes a refusal match action.ErrPermanent.
func (r *Refusal) Is(target error) bool { return target == action.ErrPermanent }

func refuse(reason Reason, format string, args ...any) *Refusal {
	return &Refusal{Reason: reason, Why: fmt.Sprintf(format, args...)}
}

// Status is what a line of the secrets file says of its secret.
type Status string

// The statuses.
const (
	// Pending: written just before the change is sent.
	Pending Status = "pending"
	// Applied: the change was made and the check saw the new secret
	// where Asterisk takes it from.
	Applied Status = "applied"
	// Failed: the change failed or its check did not see it; the
	// outcome says where the old secret stands.
	Failed Status = "failed"
)

// Line is one record of a secret for the administrator.
type Line struct {
	Time      time.Time
	Extension string // "SIP/200"
	Secret    string
	Status    Status
}

// Recorder keeps new secrets for the administrator (the secrets file,
// response.secrets_file): Record appends l and returns the path it wrote
// to, also when it fails.
type Recorder interface {
	Record(l Line) (path string, err error)
}

// Settings are the configuration a rotation runs with, taken per call.
type Settings struct {
	// Timeout bounds the whole rotation, retries included; 0: no limit
	// but the context's.
	Timeout time.Duration
	// Retry is how a failed read or change is retried.
	Retry action.Backoff
}

// Rotator rotates secrets in a Store.
type Rotator struct {
	Store Store
	// Generate returns a new secret; nil: New.
	Generate func() (string, error)
	// Now is the clock of the recorded lines and the outcome; nil:
	// time.Now.
	Now func() time.Time
}

// Result is the outcome of Rotate.
type Result struct {
	action.Outcome
	// Plan is where the secret went (or was to go).
	Plan Plan
	// Refusal is why it was skipped (Result Skipped).
	Refusal *Refusal
	// SecretsFile is the path the Recorder wrote the secret to; "" when
	// no secret was generated.
	SecretsFile string
	// RecordErr is the error of recording the change's outcome (applied
	// or failed) after the pending line was written: the file then says
	// pending for a secret that is in use, or not.
	RecordErr error
}

// Rotate gives ext a new secret. It plans (Skipped with the Refusal when
// the store refuses), generates a secret, records it as pending (Failed,
// and nothing changed, when it cannot: the secret would be lost), applies
// it, checks that it took (Store.Verify), and records it as applied only
// then, else as failed, the outcome saying where the old secret stands
// and what to do by hand. Reads, changes and checks are retried as s
// says, all within s.Timeout.
func (r Rotator) Rotate(ctx context.Context, ext ami.Extension, rec Recorder, s Settings) Result {
	now := r.Now
	if now == nil {
		now = time.Now
	}
	gen := r.Generate
	if gen == nil {
		gen = New
	}
	start := now()
	res := Result{Outcome: action.Outcome{Action: action.RotateSecret, Target: ext.String()}}
	fail := func(err error, detail string) Result {
		res.Result, res.Err, res.Retryable, res.Detail = action.Failed, err, action.Retryable(err), detail
		res.Took = now().Sub(start)
		return res
	}
	ctx, cancel := action.WithTimeout(ctx, s.Timeout)
	defer cancel()

	err := action.Retry(ctx, s.Retry, func() error {
		var err error
		res.Plan, err = r.Store.Plan(ctx, ext)
		return err
	})
	if errors.As(err, &res.Refusal) {
		res.Result, res.Detail, res.Took = action.Skipped, "cannot rotate here: "+res.Refusal.Why, now().Sub(start)
		return res
	}
	if err != nil {
		detail := "could not read where the secret of " + ext.String() + " lives"
		if f := (*Failure)(nil); errors.As(err, &f) {
			detail += ": " + f.State + "; by hand: " + f.ByHand
		}
		return fail(err, detail)
	}
	secret, err := gen()
	if err != nil {
		return fail(err, "no randomness")
	}
	res.SecretsFile, err = rec.Record(Line{Time: now().UTC(), Extension: ext.String(), Secret: secret, Status: Pending})
	if err != nil {
		return fail(err, "the secrets file "+res.SecretsFile+" cannot be written, so the secret was not changed (it would be lost)")
	}
	err = action.Retry(ctx, s.Retry, func() error { return r.Store.Apply(ctx, res.Plan, secret) })
	applied := err == nil
	var checked string
	if applied {
		// Not taken yet is worth another look after a pause (a reload
		// Asterisk runs after it answered); so is a check that could
		// not be made.
		err = action.Retry(ctx, s.Retry, func() error {
			var err error
			checked, err = r.Store.Verify(ctx, ext, res.Plan, secret)
			return err
		})
	}
	status := Applied
	if err != nil {
		status = Failed
	}
	_, res.RecordErr = rec.Record(Line{Time: now().UTC(), Extension: ext.String(), Secret: secret, Status: status})
	if err != nil {
		return fail(err, failureDetail(res.Plan, applied, err, res.SecretsFile))
	}
	res.Result, res.Took = action.Done, now().Sub(start)
	res.Detail = "new " + res.Plan.String()
	if res.Plan.Reload != "" {
		res.Detail += ", reloaded with " + res.Plan.Reload
	}
	res.Detail += "; checked: " + checked + "; the new secret is in " + res.SecretsFile + ": the real phone needs it"
	return res
}

// failureDetail says what a failed change or check left behind: where
// the old secret stands and what to do by hand. A *Failure says it
// itself; otherwise applied tells whether the change was made (its check
// failed) or not.
func failureDetail(p Plan, applied bool, err error, secretsFile string) string {
	var f *Failure
	if errors.As(err, &f) {
		d := "could not change the " + p.String()
		if applied {
			d = "changed the " + p.String() + ", but the check failed"
		}
		return d + ": " + f.State + "; by hand: " + f.ByHand
	}
	if applied {
		return "changed the " + p.String() + ", but the check could not confirm it: the old secret may still work; " +
			"by hand: see which secret Asterisk uses for it; the new one is in " + secretsFile + " (status failed)"
	}
	return "could not change the " + p.String() + ": the old secret is most likely still in use; " +
		"by hand: change it there yourself; a new one is in " + secretsFile + " (status failed)"
}

// alphabet holds only letters and digits: a SIP secret lands in sip.conf
// or pjsip.conf, where ';' starts a comment and other punctuation trips up
// phones' provisioning. Look-alikes (I, O, l, 0, 1) are left out for the
// administrator who reads it out to a user.
const alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789"

// Length is the length of a new secret: 24 characters of a 57-symbol
// alphabet, about 140 bits.
const Length = 24

// New returns a random secret from crypto/rand, without modulo bias.
func New() (string, error) {
	out := make([]byte, 0, Length)
	var b [64]byte
	for len(out) < Length {
		if _, err := rand.Read(b[:]); err != nil {
			return "", err
		}
		for _, c := range b {
			// 57*4 = 228: accept bytes below it, so every symbol is equally likely
			if int(c) < 4*len(alphabet) && len(out) < Length {
				out = append(out, alphabet[int(c)%len(alphabet)])
			}
		}
	}
	return string(out), nil
}
