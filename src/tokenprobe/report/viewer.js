// tokenprobe report viewer: draws each section's heatmap on a canvas (see heatmap.Heatmap.section).
"use strict";
(function(){
const data=JSON.parse(document.getElementById("data").textContent);
const tip=document.getElementById("tip");
const root=document.getElementById("report");
function colour(lut,v,lo,hi,bad){if(v===null)return bad||"#d9d9d9";let t=(v-lo)/((hi-lo)||1);t=Math.max(0,Math.min(1,t));return lut[Math.round(t*255)];}
function lum(hex){const n=parseInt(hex.slice(1),16);return (0.2126*(n>>16&255)+0.7152*(n>>8&255)+0.0722*(n&255))/255;}
data.sections.forEach(function(s,k){
  const sec=document.createElement("section");sec.className="heatmap";sec.dataset.kind=s.kind;
  const h=document.createElement("h2");h.textContent=s.title;sec.appendChild(h);
  const about=document.createElement("div");about.className="about";about.textContent=s.about.join("\n");sec.appendChild(about);
  if(s.image){const img=document.createElement("img");img.src=s.image;img.alt=s.title;img.style.maxWidth="100%";// one tile, not a node per cell
    sec.appendChild(img);root.appendChild(sec);sec.dataset.rendered="1";return;}
  const canvas=document.createElement("canvas");sec.appendChild(canvas);root.appendChild(sec);
  const lut=data.luts[s.cmap];const nr=s.rows.length,nc=s.cols.length;
  const left=90,topM=20,bottom=90,barW=70,rowH=Math.max(12,Math.min(22,Math.floor(620/Math.max(nr,1))));
  let c0=0,c1=nc;const view={c0:0,c1:nc};
  function size(){const w=Math.max(400,sec.clientWidth-24);canvas.width=w*devicePixelRatio;canvas.height=(topM+nr*rowH+bottom)*devicePixelRatio;
    canvas.style.width=w+"px";canvas.style.height=(topM+nr*rowH+bottom)+"px";}
  function draw(){
    const ctx=canvas.getContext("2d");ctx.setTransform(devicePixelRatio,0,0,devicePixelRatio,0,0);
    const W=canvas.width/devicePixelRatio,H=canvas.height/devicePixelRatio;ctx.clearRect(0,0,W,H);
    const plotW=W-left-barW,cw=plotW/(view.c1-view.c0);
    for(let r=0;r<nr;r++)for(let c=view.c0;c<view.c1;c++){
      const v=s.values[r][c],fill=colour(lut,v,s.vmin,s.vmax,s.bad),x=left+(c-view.c0)*cw,y=topM+r*rowH;
      ctx.fillStyle=fill;ctx.fillRect(x,y,Math.ceil(cw),rowH);
      if(s.text&&cw>=(s.text_min_px||34)){ctx.fillStyle=lum(fill)>0.45?"#000":"#fff";ctx.font="10px sans-serif";ctx.textAlign="center";ctx.textBaseline="middle";
        ctx.fillText(s.text[r][c],x+cw/2,y+rowH/2,cw-2);}
    }
    function outline(span,colour,width){if(!span)return;const a=Math.max(span[0],view.c0),b=Math.min(span[1],view.c1);
      if(a<b){ctx.strokeStyle=colour;ctx.lineWidth=width;ctx.strokeRect(left+(a-view.c0)*cw,topM,(b-a)*cw,nr*rowH);}}
    outline(s.frame,s.frame_colour||"#1b9e3e",2.5);outline(s.box,s.box_colour||"#7b1fa2",2.2);
    ctx.fillStyle="#222";ctx.font="11px sans-serif";ctx.textAlign="right";ctx.textBaseline="middle";
    const ystep=Math.ceil(12/rowH);for(let r=0;r<nr;r+=ystep)ctx.fillText(s.rows[r],left-4,topM+r*rowH+rowH/2,left-8);
    const xstep=Math.max(1,Math.ceil(13/cw));ctx.textAlign="right";
    for(let c=view.c0;c<view.c1;c+=xstep){ctx.save();ctx.translate(left+(c-view.c0+0.5)*cw,topM+nr*rowH+4);ctx.rotate(-Math.PI/2);
      ctx.fillText(s.cols[c],0,0,bottom-20);ctx.restore();}
    ctx.textAlign="center";ctx.fillText(s.xlabel,left+plotW/2,H-6);
    const bx=W-barW+12,bh=nr*rowH;for(let i=0;i<bh;i++){ctx.fillStyle=lut[Math.round(255*(1-i/bh))];ctx.fillRect(bx,topM+i,12,1);}
    ctx.fillStyle="#222";ctx.textAlign="left";ctx.fillText(s.vmax.toFixed(2),bx+15,topM+5);ctx.fillText(s.vmin.toFixed(2),bx+15,topM+bh-5);
    ctx.save();ctx.translate(bx+48,topM+bh/2);ctx.rotate(-Math.PI/2);ctx.textAlign="center";ctx.fillText(s.colorbar,0,0);ctx.restore();
  }
  function cellAt(ev){const rect=canvas.getBoundingClientRect(),x=ev.clientX-rect.left,y=ev.clientY-rect.top;
    const plotW=rect.width-left-barW,cw=plotW/(view.c1-view.c0);const c=Math.floor((x-left)/cw)+view.c0,r=Math.floor((y-topM)/rowH);
    return (x<left||c<view.c0||c>=view.c1||r<0||r>=nr)?null:{r:r,c:c,x:x,cw:cw};}
  let drag=null;
  canvas.addEventListener("mousemove",function(ev){
    if(drag){const cell=(ev.clientX-drag.x)/drag.cw;const shift=Math.round(-cell);const span=view.c1-view.c0;
      let a=Math.max(0,Math.min(nc-span,drag.c0+shift));view.c0=a;view.c1=a+span;draw();return;}
    const cell=cellAt(ev);if(!cell){tip.style.display="none";return;}
    tip.textContent=s.tips?s.tips[cell.r][cell.c]:String(s.values[cell.r][cell.c]);tip.style.display="block";
    tip.style.left=Math.min(ev.clientX+14,innerWidth-tip.offsetWidth-8)+"px";tip.style.top=(ev.clientY+14)+"px";});
  canvas.addEventListener("mouseleave",function(){tip.style.display="none";drag=null;});
  canvas.addEventListener("mousedown",function(ev){const cell=cellAt(ev);drag={x:ev.clientX,c0:view.c0,cw:cell?cell.cw:1};});
  addEventListener("mouseup",function(){drag=null;});
  canvas.addEventListener("wheel",function(ev){const cell=cellAt(ev);if(!cell)return;ev.preventDefault();
    const span=view.c1-view.c0,ns=Math.max(4,Math.min(nc,Math.round(span*(ev.deltaY>0?1.25:0.8))));
    const f=(cell.c-view.c0)/span;let a=Math.round(cell.c-f*ns);a=Math.max(0,Math.min(nc-ns,a));view.c0=a;view.c1=a+ns;draw();},{passive:false});
  canvas.addEventListener("dblclick",function(){view.c0=0;view.c1=nc;draw();});
  addEventListener("resize",function(){size();draw();});
  size();draw();sec.dataset.rendered="1";
});
document.body.dataset.ready="1";
})();
