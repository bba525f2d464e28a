package guard

import (
	"os"
	"testing"

	"github.com/astguard/astguard/internal/crowdsec/cstest"
	"github.com/astguard/astguard/internal/testenv"
)

// Most tests here wait on a fake Asterisk replaying a recording at its
// recorded pace (or 4 times faster), not on the CPU: more of them run side
// by side than the machine has cores.
//
// The CrowdSec tests share one real Local API (cstest.Shared), stopped
// after the run.
func TestMain(m *testing.M) {
	testenv.RaiseParallel(12)
	code := m.Run()
	if err := cstest.StopShared(); err != nil {
		code = 1
	}
	os.Exit(code)
}
