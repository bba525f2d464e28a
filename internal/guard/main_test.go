package guard

import (
	"os"
	"testing"

	"github.com/astguard/astguard/internal/crowdsec/cstest"
	"github.com/astguard/astguard/internal/testenv"
	"github.com/astguard/astguard/internal/testenv/testdb"
)

// Most tests here wait on a fake Asterisk replaying a recording at its
// recorded pace (or 4 times faster), not on the CPU: more of them run side
// by side than the machine has cores.
//
// The database servers of the secret stores' tests start at their first
// use and stop here; the CrowdSec tests share one real Local API
// (cstest.Shared), stopped here too.
func TestMain(m *testing.M) {
	testenv.RaiseParallel(12)
	code := m.Run()
	testdb.Stop()
	if err := cstest.StopShared(); err != nil {
		code = 1
	}
	os.Exit(code)
}
