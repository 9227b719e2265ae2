# Writes a pcap of a scenario file (flows/testdata/*.txt) and prints tshark 4.0 Info per frame:
#   python3 tshark_info.py expert_bulk.txt | cut -f2 > expert_bulk.tshark
"""Write a pcap of synthetic TCP segments and print tshark's Info for each."""
import struct, subprocess, sys, json
def csum(b):
    if len(b)%2: b+=b'\0'
    s=sum(struct.unpack('!%dH'%(len(b)//2),b)); s=(s>>16)+(s&0xffff); s+=s>>16; return (~s)&0xffff
FL={'F':1,'S':2,'R':4,'P':8,'A':16,'U':32}
def pkt(src,dst,sp,dp,flags,seq,ack,win,plen,opts=b''):
    f=sum(FL[c] for c in flags)
    while len(opts)%4: opts+=b'\x01'
    off=(20+len(opts))//4
    tcp=struct.pack('!HHIIBBHHH',sp,dp,seq&0xffffffff,ack&0xffffffff,off<<4,f,win,0,0)+opts+b'x'*plen
    ip=struct.pack('!BBHHHBBH4s4s',0x45,0,20+len(tcp),1,0,64,6,0,bytes(src),bytes(dst))
    ip=ip[:10]+struct.pack('!H',csum(ip))+ip[12:]
    eth=b'\x02'*6+b'\x04'*6+b'\x08\x00'
    return eth+ip+tcp
def mss(v): return struct.pack('!BBH',2,4,v)
def ws(v): return b'\x01'+struct.pack('!BBB',3,3,v)
def sackperm(): return b'\x01\x01\x04\x02'
def ts(a,b): return b'\x01\x01'+struct.pack('!BBII',8,10,a,b)
def sack(*blocks): return b'\x01\x01'+struct.pack('!BB',5,2+8*len(blocks))+b''.join(struct.pack('!II',l,r) for l,r in blocks)
def write(path, pkts):
    with open(path,'wb') as f:
        f.write(struct.pack('<IHHiIII',0xa1b2c3d4,2,4,0,0,65535,1))
        for t,p in pkts:
            f.write(struct.pack('<IIII',int(t),int(round((t-int(t))*1e6)),len(p),len(p))); f.write(p)
def run(pkts, path='/tmp/expert/x.pcap'):
    write(path,pkts)
    out=subprocess.run(['tshark','-r',path,'-T','fields','-e','frame.number','-e','_ws.col.Info'],capture_output=True,text=True).stdout
    return out
C=([10,0,0,1],40000); S=([10,0,0,2],49999)
def c2s(flags,seq,ack,win,plen=0,opts=b''): return pkt(C[0],S[0],C[1],S[1],flags,seq,ack,win,plen,opts)
def s2c(flags,seq,ack,win,plen=0,opts=b''): return pkt(S[0],C[0],S[1],C[1],flags,seq,ack,win,plen,opts)
def parse(path):
    pkts=[]
    for line in open(path):
        line=line.split('#')[0].strip()
        if not line: continue
        w=line.split()
        t=float(w[0])/1e6; d=w[1]; fl=w[2] if w[2]!='-' else ''
        seq,ack,win,plen=(int(x) for x in w[3:7]); o=b''
        for opt in w[7:]:
            k,_,v=opt.partition('=')
            if k=='mss': o+=mss(int(v))
            elif k=='ws': o+=ws(int(v))
            elif k=='sackperm': o+=sackperm()
            elif k=='ts': a,b=v.split(','); o+=ts(int(a),int(b))
            elif k=='sack': o+=sack(*[tuple(int(y) for y in x.split('-')) for x in v.split(',')])
        p=(c2s if d=='c' else s2c)(fl,seq,ack,win,plen,o)
        pkts.append((1700000000+t,p))
    return pkts
if __name__=='__main__':
    src=sys.argv[1]
    out=run(parse(src))
    sys.stdout.write(out)
