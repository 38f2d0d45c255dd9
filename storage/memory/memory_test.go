package memory_test

import (
	"testing"

	"github.com/sealrun/sealrun/storage/driver"
	"github.com/sealrun/sealrun/storage/drivertest"
	"github.com/sealrun/sealrun/storage/memory"
)

func TestConformance(t *testing.T) {
	drivertest.Run(t, func(t *testing.T) driver.Driver {
		d := memory.New()
		t.Cleanup(func() { _ = d.Close() })
		return d
	})
}
