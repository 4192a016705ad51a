typedef int mta_stub_writer;
