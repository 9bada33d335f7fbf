mod archive;
