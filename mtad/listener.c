typedef int mta_stub_listener;
