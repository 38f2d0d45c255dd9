package proxy

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/sealrun/sealrun/secrets"
)

// slowListStore makes a container delete's emptiness check slow, and says
// when it has started.
type slowListStore struct {
	Store
	listing chan struct{} // closed when the first List of KindRaw under "box" has its answer
	once    sync.Once
}

func (s *slowListStore) List(ctx context.Context, kind, prefix string) ([]string, error) {
	keys, err := s.Store.List(ctx, kind, prefix)
	if kind == secrets.KindRaw && prefix == "box" {
		// The answer is in hand and about to go stale.
		s.once.Do(func() { close(s.listing) })
		time.Sleep(300 * time.Millisecond)
	}
	return keys, err
}

// Deleting an empty container is atomic against a PUT into it: the PUT
// lands before (and the delete is 409) or after (and the PUT is 404), never
// inside a container that is then deleted.
func TestContainerDeleteAtomicWithPut(t *testing.T) {
	store := &slowListStore{Store: overlayStore(t), listing: make(chan struct{})}
	f := startProxy(t, store, nil)
	if code, _ := f.raw(t, "POST", "/secrets/box/", f.admin(), ""); code != 201 {
		t.Fatalf("create container: %d", code)
	}
	deleted := make(chan int)
	go func() {
		code, _ := f.raw(t, "DELETE", "/secrets/box/", f.admin(), "")
		deleted <- code
	}()
	<-store.listing // the delete has checked the container exists and is listing it
	putCode, _ := f.raw(t, "PUT", "/secrets/box/x", f.admin(jsonCT, "application/json"), simple("put-during-delete"))
	delCode := <-deleted
	getContainer, _ := f.raw(t, "GET", "/secrets/box/", f.admin(), "")
	getValue, _ := f.raw(t, "GET", "/secrets/box/x", f.admin(), "")
	if delCode != 204 || putCode != 404 || getContainer != 404 || getValue != 404 {
		t.Fatalf("delete %d, put %d, then container %d and value %d; want 204, 404, 404, 404 (the put waits for the delete)", delCode, putCode, getContainer, getValue)
	}
}
