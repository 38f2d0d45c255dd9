package proxy

import (
	"testing"

	"github.com/sealrun/sealrun/internal/leaktest"
)

// A value on its way through the proxy redacts itself like any Secret.
func TestValueNeverPrints(t *testing.T) {
	v := value("the-stored-secret-value-31")
	leaktest.NoSecret(t, "value", v, []byte("the-stored-secret-value-31"))
	leaktest.NoSecret(t, "entry", struct{ V value }{v}, []byte("the-stored-secret-value-31"))
}
