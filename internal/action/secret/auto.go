package secret

import (
	"context"
	"errors"

	"github.com/astguard/astguard/internal/ami"
)

// Auto is the store of a box whose extensions may live in the config
// files or in realtime tables: for each extension, the config files when
// its section is there, else Realtime. It is never used on a FreePBX box,
// whose files are written from its database (see package setup).
type Auto struct {
	Files ConfigFiles
	// Realtime is the store of the extensions not in the files; nil:
	// none, and those are refused (NoSection).
	Realtime Store
}

var _ Store = Auto{}

// Plan plans in the files, and in Realtime when the files have no
// section of the extension.
func (a Auto) Plan(ctx context.Context, ext ami.Extension) (Plan, error) {
	p, err := a.Files.Plan(ctx, ext)
	var ref *Refusal
	if a.Realtime != nil && errors.As(err, &ref) && ref.Reason == NoSection {
		return a.Realtime.Plan(ctx, ext)
	}
	return p, err
}

// Apply applies p in the store that planned it.
func (a Auto) Apply(ctx context.Context, p Plan, secret string) error {
	return a.of(p).Apply(ctx, p, secret)
}

// Verify checks in the store that planned p.
func (a Auto) Verify(ctx context.Context, ext ami.Extension, p Plan, secret string) (string, error) {
	return a.of(p).Verify(ctx, ext, p, secret)
}

func (a Auto) of(p Plan) Store {
	if p.Store != StoreFiles && a.Realtime != nil {
		return a.Realtime
	}
	return a.Files
}
