package main

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
)

type probeReply struct {
	instance   string
	payload    string
	deadlineUs int64
}

func encodeRequest(payload, downstream string) []byte {
	var b []byte
	if payload != "" {
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendString(b, payload)
	}
	if downstream != "" {
		b = protowire.AppendTag(b, 2, protowire.BytesType)
		b = protowire.AppendString(b, downstream)
	}
	return b
}

func decodeReply(t *testing.T, b []byte) probeReply {
	t.Helper()
	var r probeReply
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			t.Fatalf("reply tag: %v", protowire.ParseError(n))
		}
		b = b[n:]
		switch {
		case num == 1 && typ == protowire.BytesType:
			v, n := protowire.ConsumeString(b)
			if n < 0 {
				t.Fatalf("reply instance: %v", protowire.ParseError(n))
			}
			r.instance, b = v, b[n:]
		case num == 2 && typ == protowire.BytesType:
			v, n := protowire.ConsumeString(b)
			if n < 0 {
				t.Fatalf("reply payload: %v", protowire.ParseError(n))
			}
			r.payload, b = v, b[n:]
		case num == 3 && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				t.Fatalf("reply deadline_us: %v", protowire.ParseError(n))
			}
			r.deadlineUs, b = int64(v), b[n:]
		default:
			t.Fatalf("unexpected reply field %d (wire type %d)", num, typ)
		}
	}
	return r
}

// startServer serves Probe in-process on 127.0.0.1:0 and returns a client connection to it.
func startServer(t *testing.T) *grpc.ClientConn {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := newServer()
	done := make(chan error, 1)
	go func() { done <- srv.Serve(lis) }()
	t.Cleanup(func() {
		srv.GracefulStop()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return dial(t, lis.Addr().String())
}

func dial(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodecV2(rawCodec{})),
	)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func call(cc *grpc.ClientConn, method string, req []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out []byte
	err := cc.Invoke(ctx, "/sterling.testing.v1.Probe/"+method, req, &out)
	return out, err
}

func TestReadEchoesPayload(t *testing.T) {
	cc := startServer(t)
	out, err := call(cc, "Read", encodeRequest("hi", ""))
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	got := decodeReply(t, out)
	if got.instance != "grpc-go" || got.payload != "hi" || got.deadlineUs != 0 {
		t.Fatalf("Read reply = %+v, want instance grpc-go, payload hi, deadline_us 0", got)
	}
}

func TestWriteEchoesPayloadAndSkipsUnknownFields(t *testing.T) {
	cc := startServer(t)
	req := encodeRequest("", "elsewhere")
	// Unknown fields of every wire type, around the payload.
	req = protowire.AppendTag(req, 7, protowire.VarintType)
	req = protowire.AppendVarint(req, 300)
	req = protowire.AppendTag(req, 8, protowire.Fixed64Type)
	req = protowire.AppendFixed64(req, 1)
	req = protowire.AppendTag(req, 1, protowire.BytesType)
	req = protowire.AppendString(req, "written")
	req = protowire.AppendTag(req, 9, protowire.StartGroupType)
	req = protowire.AppendTag(req, 10, protowire.BytesType)
	req = protowire.AppendString(req, "nested")
	req = protowire.AppendTag(req, 9, protowire.EndGroupType)
	req = protowire.AppendTag(req, 11, protowire.Fixed32Type)
	req = protowire.AppendFixed32(req, 2)

	out, err := call(cc, "Write", req)
	if err != nil {
		t.Fatalf("Write: %v", err)
	}
	got := decodeReply(t, out)
	if got.instance != "grpc-go" || got.payload != "written" || got.deadlineUs != 0 {
		t.Fatalf("Write reply = %+v, want instance grpc-go, payload written", got)
	}
}

func TestEmptyRequestOmitsPayload(t *testing.T) {
	cc := startServer(t)
	out, err := call(cc, "Read", nil)
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	if want := encodeReply("grpc-go", "", 0); string(out) != string(want) {
		t.Fatalf("reply bytes = %x, want %x", out, want)
	}
}

func TestMalformedRequestIsInvalidArgument(t *testing.T) {
	cc := startServer(t)
	for name, req := range map[string][]byte{
		"truncated length": {0x0a, 0x05, 'h', 'i'},
		"bad wire type":    {0x0f},
		"field number 0":   {0x02, 0x00},
		"truncated varint": {0x38, 0xff},
		"invalid utf-8":    {0x0a, 0x01, 0xff},
	} {
		_, err := call(cc, "Read", req)
		if code := status.Code(err); code != codes.InvalidArgument {
			t.Errorf("%s: code = %v (err %v), want InvalidArgument", name, code, err)
		}
	}
}

func TestUnknownMethodIsUnimplemented(t *testing.T) {
	cc := startServer(t)
	_, err := call(cc, "Stream", encodeRequest("hi", ""))
	if code := status.Code(err); code != codes.Unimplemented {
		t.Fatalf("code = %v (err %v), want Unimplemented", code, err)
	}
}
